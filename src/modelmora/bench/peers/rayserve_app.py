"""Ray Serve serving a sentence-transformers model with ``@serve.batch`` (run with ``python -m``).

Usage: ``python -m modelmora.bench.peers.rayserve_app --port P --model DIR
[--max-batch-size 32] [--batch-timeout-ms 5]``; answers ``POST / {"input": text}`` with
``{"embedding": [...]}``. Runs a local Ray instance that ends with this process.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from modelmora.bench.peers import server_arguments


def main() -> None:
    args = server_arguments(__doc__)

    import ray
    from ray import serve
    from starlette.requests import Request

    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})

    @serve.deployment(max_ongoing_requests=256)
    class Embedder:
        def __init__(self, path: str) -> None:
            from sentence_transformers import SentenceTransformer

            self.model = SentenceTransformer(path, device="cpu")

        @serve.batch(
            max_batch_size=args.max_batch_size,
            batch_wait_timeout_s=args.batch_timeout_ms / 1000,
        )
        async def embed(self, texts: list[str]) -> list[list[float]]:
            return [[float(x) for x in row] for row in self.model.encode(texts)]

        async def __call__(self, request: Request) -> dict[str, Any]:
            body = await request.json()
            return {"embedding": await self.embed(str(body["input"]))}

    app = Embedder.bind(args.model)  # type: ignore[attr-defined]
    serve.run(app, route_prefix="/", blocking=False)
    print("ready", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
