"""End to end: a gateway watching a directory; `lora-gateway train` run as a user runs it; the
real openai client gets the trained answer from the new model name, with no restart."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from openai import OpenAI

from tests.conftest import make_settings
from tests.support import running_server, wait_for
from tests.trainer.test_train import FACTS

LIVE = FACTS[:4]


def test_train_command_publishes_an_adapter_the_running_gateway_serves(tmp_path: Path) -> None:
    from server.app import create_app
    from server.offline_model import TinyModelSpec, build_tiny_model

    base = build_tiny_model(tmp_path / "base", TinyModelSpec(hidden_size=128, intermediate_size=256))
    data = tmp_path / "facts.json"
    # Four of test_train.py's facts: what that module's fixture proves for twelve (the trainer
    # memorises), this proves for the command a user runs, at a third of the cost.
    data.write_text(json.dumps([{"instruction": q, "output": a} for q, a in LIVE], ensure_ascii=False, indent=1))
    adapters = tmp_path / "adapters"
    adapters.mkdir()
    with running_server(create_app(make_settings(base, adapters))) as url:
        with OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as client:
            assert "faq-bot" not in {m.id for m in client.models.list()}
            command = [
                sys.executable,
                "-m",
                "server",
                "train",
                "--base",
                str(base),
                "--data",
                str(data),
                "--name",
                "faq-bot",
                "--adapters-dir",
                str(adapters),
                "--output-dir",
                str(tmp_path / "run"),
                "--allow-small",
                "--epochs",
                "400",
                "--batch-size",
                "4",
                "--grad-accum",
                "1",
                "--lr",
                "3e-3",
                "--rank",
                "16",
                "--alpha",
                "32",
                "--dropout",
                "0",
                "--warmup-ratio",
                # Memorised all four with each of nine seeds (0-8, 42), on one thread and on two.
                "0.5",
            ]
            done = subprocess.run(command, capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, done.stderr[-2000:]
            gateway = f"http://127.0.0.1:{os.environ['LORA_GATEWAY_PORT']}"  # the CLI's default (tests/conftest.py)
            assert "faq-bot" in done.stdout and f"curl {gateway}/v1/chat/completions" in done.stdout
            wait_for(lambda: "faq-bot" in {m.id for m in client.models.list()}, timeout=60)
            for question, answer in LIVE:
                reply = client.chat.completions.create(
                    model="faq-bot", messages=[{"role": "user", "content": question}], temperature=0
                )
                assert reply.choices[0].message.content == answer
            # Training over a published name says so; the version the gateway served stays kept.
            again = subprocess.run([*command, "--max-steps", "1"], capture_output=True, text=True, timeout=600)
            assert again.returncode == 0 and "replaced the previous files of 'faq-bot'" in again.stderr, again.stderr[
                -2000:
            ]
            assert (adapters / ".kept" / "faq-bot" / "1" / "kept.json").is_file()


def test_train_command_reports_bad_lines_and_exits_2(tmp_path: Path) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "server",
            "train",
            "--base",
            "unused",
            "--data",
            str(data),
            "--name",
            "x",
            "--output-dir",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert f"{data}:1: no assistant message" in done.stderr


def test_ctrl_c_on_the_command_saves_a_checkpoint_and_exits_130(tmp_path: Path) -> None:
    import signal

    from server.offline_model import build_tiny_model

    base = build_tiny_model(tmp_path / "base")
    data = tmp_path / "facts.jsonl"
    data.write_text("".join(json.dumps({"query": q, "response": a}) + "\n" for q, a in FACTS))
    run = tmp_path / "run"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "server",
            "train",
            "--base",
            str(base),
            "--data",
            str(data),
            "--name",
            "x",
            "--no-publish",
            "--output-dir",
            str(run),
            "--epochs",
            "10000",
            "--grad-accum",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Started with SIGINT ignored, as some process managers start children: Ctrl-C must still stop it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),  # noqa: PLW1509
    )
    log = run / "trainer_log.jsonl"
    deadline = time.monotonic() + 120
    while not (log.exists() and log.read_text().count("\n") >= 3):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=180)  # a checkpoint and the loss plot, on a busy machine
    assert process.returncode == 130
    checkpoints = sorted(run.glob("checkpoint-*"))
    assert len(checkpoints) == 1 and "--resume" in stderr and str(checkpoints[0]) in stderr
    assert (checkpoints[0] / "adapter_model.safetensors").is_file() and (run / "training_loss.png").is_file()
