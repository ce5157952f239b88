"""MLServer: a custom runtime (MLModel) speaking the Open Inference Protocol v2, with
adaptive batching from model-settings.json (max_batch_size, max_batch_time)."""

import sys
from pathlib import Path

import numpy as np
from mlserver import MLModel
from mlserver.codecs import StringCodec
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from sentiment import SentimentModel  # noqa: E402


class SentimentRuntime(MLModel):
    async def load(self) -> bool:
        self.model = SentimentModel()
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        texts = StringCodec.decode_input(payload.inputs[0])
        out = self.model.predict(texts)
        labels = [o["label"] for o in out]
        scores = np.asarray([o["score"] for o in out], dtype=np.float32)
        return InferenceResponse(model_name=self.name, outputs=[
            StringCodec.encode_output("label", labels),
            ResponseOutput(name="score", shape=[len(out), 1], datatype="FP32",
                           data=scores.tolist())])
