"""LitServe serving a sentence-transformers model, batched (run with ``python -m``).

Usage: ``python -m modelmora.bench.peers.litserve_app --port P --model DIR
[--max-batch-size 32] [--batch-timeout-ms 5]``; answers ``POST /predict {"input": text}``
with ``{"embedding": [...]}``. LitServe spawns its inference worker, so the API class lives at
module level (it is pickled) and carries the model folder as an attribute.
"""

from typing import Any

import litserve as ls

from modelmora.bench.peers import server_arguments


class EmbeddingAPI(ls.LitAPI):
    """One sentence in, its embedding out; LitServe forms the batches."""

    def __init__(self, model: str, max_batch_size: int, batch_timeout: float) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout)
        self.model_path = model

    def setup(self, device: str) -> None:
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(self.model_path, device="cpu")

    def decode_request(self, request: dict[str, Any]) -> str:
        return str(request["input"])

    def predict(self, texts: list[str]) -> Any:
        return self.model.encode(texts, batch_size=len(texts))

    def encode_response(self, output: Any) -> dict[str, Any]:
        return {"embedding": [float(x) for x in output]}


def main() -> None:
    args = server_arguments(__doc__)
    api = EmbeddingAPI(args.model, args.max_batch_size, args.batch_timeout_ms / 1000)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1)
    server.run(port=args.port, host="127.0.0.1", generate_client_file=False)


if __name__ == "__main__":
    main()
