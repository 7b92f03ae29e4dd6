"""`lora-gateway demo` for the README test, started as soon as the session knows it will run it.

The demo trains three adapters (minutes of CPU). Started when collection ends, at the lowest CPU
priority and on one thread, it trains on the core the other tests leave idle (they mostly keep one
busy), so it is ready or nearly by the time ``tests/test_readme.py`` runs, instead of adding its
minutes to the session. Its priority is raised back once it serves, where the system allows it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO

from tests.support import free_port, wait_ready

ROOT = Path(__file__).resolve().parents[1]
_LOWEST = 19


class BackgroundDemo:
    """The demo's process, in a directory laid out like a checkout (``.venv``, ``examples``)."""

    def __init__(self) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="lora-gateway-readme-"))
        work = self.work
        self.port = free_port()
        (work / ".venv").symlink_to(Path(sys.executable).parents[1])
        (work / "examples").symlink_to(ROOT / "examples")
        self.log: IO[bytes] = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [str(work / ".venv" / "bin" / "lora-gateway"), "demo", "--port", str(self.port)],
            cwd=work,
            # One thread: two would wait on each other whenever a test takes one of the two cores.
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            stdout=self.log,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: os.nice(_LOWEST),  # noqa: PLW1509 (nothing but a nice() before exec)
        )

    def ready(self, timeout: float) -> None:
        """Wait for ``/ready``; the demo's output in the failure if it exited first."""
        wait_ready(f"http://127.0.0.1:{self.port}", timeout, self._still_running)
        try:
            os.setpriority(os.PRIO_PROCESS, self.process.pid, 0)
        except OSError:  # an unprivileged user cannot raise a priority back; it only serves slower
            pass

    def _still_running(self) -> None:
        if self.process.poll() is not None:
            self.log.seek(0)
            raise AssertionError(f"the demo exited: {self.log.read().decode(errors='replace')[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()
        shutil.rmtree(self.work, ignore_errors=True)


_demo: BackgroundDemo | None = None


def start() -> BackgroundDemo:
    """The session's demo, started now unless it already was."""
    global _demo
    if _demo is None:
        _demo = BackgroundDemo()
    return _demo


def stop() -> None:
    global _demo
    if _demo is not None:
        _demo.stop()
        _demo = None
