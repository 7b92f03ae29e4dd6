"""A gateway started for one eval run: the base and the adapters or checkpoints to compare, served
from a temporary adapters directory, so a training checkpoint is asked without being published.

Only an adapter's own files are copied (config, safetensors weights, profile): a checkpoint's
optimizer state is never read. The gateway is the real one (``create_app``), on a free port of
127.0.0.1, in a thread, and gone when the run ends.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from ..terms.layout import SERVED_FILES

_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def served_name(path: Path) -> str:
    """``runs/shop/checkpoint-200`` -> ``shop.checkpoint-200``, ``runs/shop/adapter`` -> ``shop.adapter``;
    any other adapter directory keeps its name."""
    in_run = path.name.startswith("checkpoint-") or path.name == "adapter"
    name = f"{path.parent.name}.{path.name}" if in_run else path.name
    return _NAME.sub("-", name).strip("-.")[:64] or "adapter"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def local_gateway(base: str, adapters: dict[str, Path], *, device: str = "auto", timeout: float = 600) -> Iterator[str]:
    """Serve ``base`` and ``adapters`` (served name -> directory); yield the gateway's URL."""
    import uvicorn

    from ..app import create_app
    from ..serving import uvicorn_config
    from ..settings import Settings

    with tempfile.TemporaryDirectory(prefix="lora-gateway-eval-") as scratch:
        directory = Path(scratch) / "adapters"
        directory.mkdir()
        for name, source in adapters.items():
            (directory / name).mkdir()
            for file in SERVED_FILES:
                if (source / file).is_file():
                    shutil.copyfile(source / file, directory / name / file)
        settings = Settings(model=base, adapters_dir=directory, served_model_name="base", device=device)  # type: ignore[arg-type]
        port = _free_port()
        server = uvicorn.Server(uvicorn_config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, name="eval-gateway", daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                        break
                if not thread.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"the eval gateway for {base} did not become ready")
                time.sleep(0.1)
            yield url
        finally:
            server.should_exit = True
            thread.join(timeout=60)
