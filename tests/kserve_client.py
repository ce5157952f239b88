"""Run by tests/test_v2_kserve.py in its own process: KServe's InferenceRESTClient (v2)
against a server URL; prints what it saw as one JSON object.

Its own process because `kserve` and `tritonclient.grpc` register the same protobuf
package (`inference`), which one Python process can hold only once.
"""

from __future__ import annotations

import asyncio
import json
import sys

from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig


async def main(url: str, rows: list, texts: list) -> dict:
    config = RESTConfig(protocol="v2", retries=0, timeout=30)
    async with InferenceRESTClient(config) as client:
        out: dict = {"live": await client.is_server_live(url),
                     "ready": await client.is_server_ready(url),
                     "model_ready": await client.is_model_ready(url, "tabular")}
        flat = [x for row in rows for x in row]
        request = InferRequest(model_name="tabular", request_id="k-1", infer_inputs=[
            InferInput("features", [len(rows), len(rows[0])], "FP32", data=flat)])
        response = await client.infer(url, request, model_name="tabular")
        out["rows"] = {o.name: o.data for o in response.outputs}
        out["rows_id"] = response.id
        request = InferRequest(model_name="sentiment", infer_inputs=[
            InferInput("text", [len(texts)], "BYTES", data=texts)])
        response = await client.infer(url, request, model_name="sentiment")
        out["text"] = {o.name: o.data for o in response.outputs}
        try:
            await client.infer(url, InferRequest(model_name="tabular", infer_inputs=[
                InferInput("features", [1, 3], "FP32", data=[1.0, 2.0, 3.0])]),
                model_name="tabular")
            out["error"] = None
        except Exception as exc:  # noqa: BLE001 - the test reads what it was
            out["error"] = str(exc)
    return out


if __name__ == "__main__":
    url, rows, texts = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
    print(json.dumps(asyncio.run(main(url, rows, texts)), default=str))
