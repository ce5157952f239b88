"""What the Open Inference Protocol says about the server and a model, for REST and gRPC
alike."""

from __future__ import annotations

from typing import Any

from app import __version__
from app.api.v2.tensors import PLATFORM, signature
from app.serving.dataplane import DataPlane

SERVER_NAME = "ortserve"
EXTENSIONS = ["binary_tensor_data", "model_repository"]


def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}


def model_metadata(dataplane: DataPlane, name: str, version: int | None) -> dict[str, Any]:
    served = dataplane.served(name, version)
    inputs, outs = signature(served)
    versions = dataplane.model(name).served
    return {"name": served.name, "versions": [str(v) for v in versions], "platform": PLATFORM,
            "inputs": [{"name": n, "datatype": d, "shape": s} for n, d, s in inputs],
            "outputs": [{"name": n, "datatype": d, "shape": s} for n, d, s in outs]}


def repository_index(dataplane: DataPlane, ready_only: bool) -> list[dict[str, str]]:
    """Triton's repository index: name, version ("" when none), STATE, reason."""
    entries = [{"name": e.name, "version": str(e.version) if e.version else "",
                "state": e.state.upper(), "reason": e.reason or ""}
               for e in dataplane.index()]
    return [e for e in entries if e["state"] == "READY"] if ready_only else entries
