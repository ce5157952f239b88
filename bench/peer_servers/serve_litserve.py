"""LitServe: a LitAPI with server-side batching (max_batch_size, batch_timeout), one worker
on the CPU, as LitServe's docs show for dynamic batching. POST /predict {"text": "..."}."""

import sys

import litserve as ls
from sentiment import SentimentModel


class SentimentAPI(ls.LitAPI):
    def setup(self, device):
        self.model = SentimentModel()

    def decode_request(self, request):
        return request["text"]

    def predict(self, texts):
        return self.model.predict(list(texts))

    def encode_response(self, output):
        return output


if __name__ == "__main__":
    api = SentimentAPI(max_batch_size=64, batch_timeout=0.005)
    ls.LitServer(api, accelerator="cpu", workers_per_device=1).run(
        port=int(sys.argv[1]), generate_client_file=False)
