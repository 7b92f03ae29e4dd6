"""Run a gateway under uvicorn with the shutdown its users expect.

Ctrl-C (or SIGTERM from systemd, Docker, Kubernetes) stops accepting connections at once, then gives
requests in flight ``--shutdown-timeout`` seconds to finish. Past that, every stream still running
ends with an OpenAI error event and ``[DONE]`` (a non-streaming request gets a 503), so clients see
a clean, retryable failure rather than a cut connection; then the process exits. A second Ctrl-C
exits at once, quietly, once the captured conversations and usage counts still in memory are
written (bounded: ``_SAVE_S``). A failed start-up ends the process with status 1 and one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import sys
import threading
from types import FrameType
from typing import Any

import uvicorn

from .connections import guarded_protocol
from .gateway import Gateway

logger = logging.getLogger(__name__)
# uvicorn's own deadline, past ours: it cancels whatever did not end by then (a stalled engine).
_BACKSTOP_S = 5.0
_SAVE_S = 3.0  # what a second signal still waits for the pending rows to be written


class GatewayServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, gateway: Gateway, shutdown_timeout: float) -> None:
        super().__init__(config)
        self.gateway = gateway
        self.shutdown_timeout = shutdown_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        gateway.on_fatal = self._fatal

    async def startup(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets=sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit:  # the second signal: no more waiting, and no tracebacks
            saved = save_pending(self.gateway, _SAVE_S)
            os.write(2, b"\nlora-gateway: stopped at once" + (b"" if saved else b" (pending rows not saved)") + b"\n")
            os._exit(130 if sig == signal.SIGINT else 143)
        super().handle_exit(sig, frame)
        self.begin_shutdown()

    def begin_shutdown(self) -> None:
        """Stop accepting now; end what still runs after the grace period (thread-safe)."""
        self.should_exit = True
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.call_later, self.shutdown_timeout, self._end_requests)

    def _end_requests(self) -> None:
        if self.gateway.closing:
            return
        self.gateway.closing = True
        logger.info(
            "shutdown: the grace period of %.1f s is over; ending the requests still running", self.shutdown_timeout
        )

    def _fatal(self, message: str) -> None:
        self.should_exit = True


def save_pending(gateway: Gateway, timeout: float) -> bool:
    """Write the conversations and usage counts held in memory, within ``timeout`` seconds (on a
    thread of its own: the signal may have interrupted the thread that holds a store's lock).
    True when everything was written."""
    done = threading.Event()

    def save() -> None:
        with contextlib.suppress(Exception):
            if gateway.feedback is not None:
                gateway.feedback.flush()
            gateway.tenancy.usage.flush()
            done.set()

    threading.Thread(target=save, name="save-pending", daemon=True).start()
    return done.wait(timeout)


def uvicorn_config(gateway_app: Any, *, host: str, port: int, log_level: str) -> uvicorn.Config:
    """uvicorn with the gateway's connection bounds (also what the test suite serves with)."""
    settings = gateway_app.state.gateway.settings
    return uvicorn.Config(
        gateway_app,
        host=host,
        port=port,
        log_level=log_level,
        http=guarded_protocol(settings.header_timeout, settings.max_header_bytes),
        timeout_keep_alive=settings.keep_alive_timeout,  # a float works, whatever uvicorn's hint says
        limit_concurrency=settings.limit_concurrency,
        timeout_graceful_shutdown=settings.shutdown_timeout + _BACKSTOP_S,
    )


def raise_open_file_limit() -> None:
    """Lift the soft limit on open files to the hard one: every connection and adapter file is one."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):  # an unlimited hard limit some kernels refuse as a soft one
        logger.debug("could not raise the open-file limit", exc_info=True)


def run(gateway_app: Any, *, host: str, port: int, log_level: str, shutdown_timeout: float) -> None:
    """Serve until a signal; raise SystemExit with one line if the start-up failed."""
    gateway: Gateway = gateway_app.state.gateway
    raise_open_file_limit()
    server = GatewayServer(
        uvicorn_config(gateway_app, host=host, port=port, log_level=log_level), gateway, shutdown_timeout
    )
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled, once it has shut down
        sys.exit(130)
    if gateway.boot_error:
        raise SystemExit(f"lora-gateway: {gateway.boot_error}")
    if not server.started:
        raise SystemExit(f"lora-gateway: could not listen on {host}:{port}")
