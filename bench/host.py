"""The host a benchmark runs on, and the models it measures: every report names the CPU
(with the vector extensions that matter for int8) and reads the newest version of a model."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def latest(models: Path, name: str) -> Path:
    versions = sorted((p for p in (models / name).iterdir() if p.name.isdigit()),
                      key=lambda p: int(p.name))
    return versions[-1]


FLAGS = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_vnni": "AVX-512 VNNI",
         "avx_vnni": "AVX-VNNI"}


def cpu_model() -> str:
    """The CPU's name, its vector extensions that matter for int8 (AVX2, AVX-512, VNNI)
    and the cores this process may use: figures compare only within one such host."""
    name, flags = platform.processor() or "unknown", set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    found = ", ".join(v for k, v in FLAGS.items() if k in flags) or "no AVX2"
    return f"{name} ({found}), {len(os.sched_getaffinity(0))} cores"
