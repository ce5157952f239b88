"""PyTriton: Triton Inference Server's core with a Python model, its dynamic batcher
(max_batch_size, max_queue_delay_microseconds), as PyTriton's docs show.
POST /v2/models/sentiment/infer with a BYTES tensor."""

import sys

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig
from sentiment import SentimentModel

model = SentimentModel()


@batch
def infer(text):
    out = model.predict([t[0].decode() for t in text])
    return {"score": np.asarray([[o["score"]] for o in out], dtype=np.float32),
            "label": np.asarray([[o["label"].encode()] for o in out], dtype=object)}


if __name__ == "__main__":
    port = int(sys.argv[1])
    config = TritonConfig(http_port=port, grpc_port=port + 1, metrics_port=port + 2)
    with Triton(config=config) as triton:
        triton.bind(model_name="sentiment", infer_func=infer,
                    inputs=[Tensor(name="text", dtype=bytes, shape=(1,))],
                    outputs=[Tensor(name="score", dtype=np.float32, shape=(1,)),
                             Tensor(name="label", dtype=bytes, shape=(1,))],
                    config=ModelConfig(max_batch_size=64, batcher=DynamicBatcher(
                        max_queue_delay_microseconds=5000)))
        triton.serve()
