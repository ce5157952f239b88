"""BentoML: a service with a batchable API (adaptive batching: max_batch_size,
max_latency_ms), one worker, as BentoML's docs show. POST /predict {"texts": ["..."]}.
Started by `bentoml serve serve_bentoml:Sentiment --port N`."""

import bentoml
from sentiment import SentimentModel


@bentoml.service(workers=1)
class Sentiment:
    def __init__(self) -> None:
        self.model = SentimentModel()

    @bentoml.api(batchable=True, max_batch_size=64, max_latency_ms=1000)
    def predict(self, texts: list[str]) -> list[dict]:
        return self.model.predict(texts)
