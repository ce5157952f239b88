"""Writes a trained model into the versioned repository (`app/contract/publish.py` does the
publishing), with the provenance the trainer records."""

from __future__ import annotations

from app.contract.publish import VersionWriter, existing_versions, new_version

__all__ = ["VersionWriter", "existing_versions", "new_version", "package_versions",
           "provenance"]


def package_versions(*names: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for n in names:
        try:
            out[n] = version(n)
        except PackageNotFoundError:
            continue
    return out


def provenance(source: str, sha256: str, seed: int, profile: str, hyperparameters: dict,
               wall_time_s: float, **extra) -> dict:
    import platform

    return {
        "data_source": source,
        "data_sha256": sha256,
        "seed": seed,
        "profile": profile,
        "hyperparameters": hyperparameters,
        "wall_time_s": round(wall_time_s, 1),
        "python": platform.python_version(),
        "packages": package_versions("torch", "transformers", "onnx", "onnxruntime",
                                     "scikit-learn", "numpy", "tokenizers"),
        **extra,
    }
