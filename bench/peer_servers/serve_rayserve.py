"""Ray Serve: a deployment with @serve.batch (max_batch_size, batch_wait_timeout_s), one
replica, as Ray Serve's docs show for dynamic batching. POST / {"text": "..."}."""

import sys
import time

from ray import serve
from sentiment import SentimentModel
from starlette.requests import Request


@serve.deployment(max_ongoing_requests=256)
class Sentiment:
    def __init__(self) -> None:
        self.model = SentimentModel()

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)
    async def predict(self, texts: list[str]) -> list[dict]:
        return self.model.predict(texts)

    async def __call__(self, request: Request) -> dict:
        return await self.predict((await request.json())["text"])


if __name__ == "__main__":
    serve.start(http_options={"host": "127.0.0.1", "port": int(sys.argv[1])})
    serve.run(Sentiment.bind(), route_prefix="/")
    while True:
        time.sleep(3600)
