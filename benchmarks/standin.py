"""A gateway whose engine answers instantly with a fixed text: the HTTP and registry layers alone.

    .venv/bin/python benchmarks/standin.py --model BASE --adapters-dir DIR --port 8123 [serve flags]

Takes ``lora-gateway serve``'s flags (the base model is read for its config and tokenizer only;
no weights are loaded), so a benchmark measures what the gateway adds to a request, without model
compute to hide it.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from server.engine.base import AdapterRef, Engine, EngineHealth, GenerationDelta, GenerationRequest  # noqa: E402

ANSWER = "Your order ships within 3 days."


class InstantEngine(Engine):
    max_model_len = 32768

    def __init__(self) -> None:
        self._adapters: set[str] = set()

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def add_adapter(self, adapter: AdapterRef) -> None:
        self._adapters.add(f"{adapter.name}:{adapter.adapter_id}")

    async def remove_adapter(self, adapter: AdapterRef) -> None:
        self._adapters.discard(f"{adapter.name}:{adapter.adapter_id}")

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        for index in range(request.sampling.n):
            yield GenerationDelta(index, ANSWER, "stop", prompt_tokens=8, completion_tokens=7)

    def health(self) -> EngineHealth:
        return EngineHealth(True, loaded_adapters=sorted(self._adapters))


def main(argv: list[str]) -> None:
    import uvicorn

    from server.app import create_app
    from server.cli import _settings_from, build_parser

    args = build_parser(settings_flags=True).parse_args(["serve", *argv])
    settings = _settings_from(args)
    uvicorn.run(create_app(settings, InstantEngine()), host=settings.host, port=settings.port, log_level="warning")


if __name__ == "__main__":
    main(sys.argv[1:])
