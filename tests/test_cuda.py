"""On a machine with onnxruntime-gpu and a visible GPU: every model runs on the CUDA
execution provider and answers as the CPU provider does. Skipped where a real CUDA session
cannot start (the rest of the suite covers the CPU provider and the fall-back when CUDA is
asked for but missing), unless ORTSERVE_EXPECT_GPU=1 says it should: then it fails
(`make test-gpu`)."""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def cuda(cuda_error):
    if cuda_error is None:
        return
    if os.environ.get("ORTSERVE_EXPECT_GPU") == "1":
        pytest.fail(f"ORTSERVE_EXPECT_GPU=1, but no CUDA session starts: {cuda_error}")
    pytest.skip(f"no CUDA session starts here: {cuda_error}")

INPUTS = {"sentiment": ["what a great day", "the service was awful", "it is a table"],
          "tabular": [[0.1, -0.2, 0.3, 0.4], [1.5, 0.0, -0.7, 2.0]],
          "regression": [[0.1, -0.2, 0.3, 0.4]]}


def _numbers(prediction: dict) -> list[float]:
    if "value" in prediction:
        return [prediction["value"]]
    return [prediction["scores"][k] for k in sorted(prediction["scores"])]


async def test_models_run_on_cuda_and_agree_with_cpu(make_client):
    gpu = await make_client(device="cuda", strict_device=True)
    cpu = await make_client(device="cpu")
    for name, inputs in INPUTS.items():
        meta = (await gpu.get(f"/models/{name}")).json()
        assert meta["provider"] == "CUDAExecutionProvider", meta
        on_gpu = await gpu.post("/predict", json={"model": name, "inputs": inputs})
        on_cpu = await cpu.post("/predict", json={"model": name, "inputs": inputs})
        assert on_gpu.status_code == on_cpu.status_code == 200, (on_gpu.text, on_cpu.text)
        for g, c in zip(on_gpu.json()["predictions"], on_cpu.json()["predictions"],
                        strict=True):
            assert _numbers(g) == pytest.approx(_numbers(c), abs=1e-3)
