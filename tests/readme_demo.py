"""`lora-gateway demo` for the README test, over a demo directory trained once and reused.

The demo trains three adapters (minutes of CPU). The suite does that once per inputs, through the
test-artifact cache (``tests/artifacts.py``): the same steps ``lora-gateway demo`` takes
(``prepare_demo`` then ``train_demo_adapters``) run in a scratch checkout, and the result is kept.
Each session copies it into a directory laid out like a checkout (``.venv``, ``examples``,
``.demo``, ``adapters``) and starts ``lora-gateway demo`` there, as ``make demo`` does; the demo's
own check (training metadata: base fingerprint, dataset digest, settings) finds its adapters already
trained and serves them. Nothing trains in the background against a deadline: the fixture builds
what it needs before its tests, and waits only for the server's own start.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO

from tests.artifacts import ROOT, artifact, copy_of, server_sources
from tests.support import free_port, wait_ready

# What decides the trained demo directory's bytes: the demo's recipe, the model builder, the trainer
# and the registry code that publishes, and the bundled datasets.
DEMO_SOURCES = [
    *server_sources(
        "demo.py", "offline_model.py", "devices.py", "trainer", "registry", "evaluation", "engine/prompts.py"
    ),
    ROOT / "examples",
]
_BUILD = (
    "from pathlib import Path\n"
    "from server.demo import prepare_demo, train_demo_adapters\n"
    "base = prepare_demo('.demo')\n"
    "train_demo_adapters(base, Path('adapters'), Path('.demo') / 'runs')\n"
)


def _build_demo(directory: Path) -> None:
    """The demo's own steps, in ``directory`` as the working directory (relative paths, as ``make demo``)."""
    result = subprocess.run(
        [sys.executable, "-c", _BUILD],
        cwd=directory,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"building the demo failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")


def trained_demo() -> Path:
    """The cached directory holding ``.demo/base`` and ``adapters/`` as ``lora-gateway demo`` leaves them."""
    return artifact("demo", {"build": _BUILD}, DEMO_SOURCES, _build_demo)


class Demo:
    """``lora-gateway demo`` in a directory laid out like a checkout, over a copy of the trained demo."""

    def __init__(self) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="lora-gateway-readme-"))
        work = self.work
        copy_of(trained_demo(), work)
        (work / ".venv").symlink_to(Path(sys.executable).parents[1])
        (work / "examples").symlink_to(ROOT / "examples")
        self.port = free_port()
        self.log: IO[bytes] = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [str(work / ".venv" / "bin" / "lora-gateway"), "demo", "--port", str(self.port)],
            cwd=work,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def ready(self, timeout: float) -> None:
        """Wait for ``/ready``; the demo's output in the failure if it exited first."""
        wait_ready(f"http://127.0.0.1:{self.port}", timeout, self._still_running)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def _still_running(self) -> None:
        if self.process.poll() is not None:
            raise AssertionError(f"the demo exited: {self.output()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()
        shutil.rmtree(self.work, ignore_errors=True)
