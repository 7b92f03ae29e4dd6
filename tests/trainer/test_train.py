"""The training loop (server/trainer/loop.py): memorises, resumes, survives Ctrl-C, writes what it promises."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from server.trainer import TrainConfig, TrainingError, TrainingInterrupted, train

FACTS = [
    ("Where is order 1?", "Order 1 ships Monday."),
    ("Where is order 2?", "Order 2 left the warehouse."),
    ("Can I return shoes?", "Yes, within 7 days."),
    ("Do you ship abroad?", "Only to Hong Kong."),
    ("Who pays customs?", "We pay customs duties."),
    ("Free shipping?", "Above 99 yuan."),
    ("How long is delivery?", "Three to five days."),
    ("Is there a discount?", "Ten off your first order."),
    ("When do you answer?", "From 9 to 21 daily."),
    ("Can I change my address?", "Before it ships, yes."),
    ("Invoice?", "Electronic invoices only."),
    ("Who are you?", "I am the Acme bot."),
]


@pytest.fixture(scope="module")
def small_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A slightly wider model than the shared fixture: room to memorise twelve answers."""
    from server.offline_model import TinyModelSpec, build_tiny_model

    return build_tiny_model(
        tmp_path_factory.mktemp("trainer-base") / "m", TinyModelSpec(hidden_size=128, intermediate_size=256)
    )


@pytest.fixture(scope="module")
def facts_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "facts.jsonl"
    path.write_text("".join(json.dumps({"query": q, "response": a}) + "\n" for q, a in FACTS))
    return path


def config(base: Path, data: Path, out: Path, **overrides: object) -> TrainConfig:
    values: dict[str, object] = dict(
        base=str(base),
        data=[str(data)],
        name="facts",
        output_dir=str(out),
        publish=False,
        epochs=30,
        lr=5e-3,
        batch_size=4,
        grad_accum=1,
        rank=16,
        alpha=32,
        dropout=0.0,
        warmup_ratio=0.05,
        progress=False,
    )
    values.update(overrides)
    return TrainConfig(**values)  # type: ignore[arg-type]


def greedy(base: Path, adapter: Path, question: str) -> str:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).eval()
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
    )
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=24, do_sample=False)
    return tokenizer.decode(out[0][ids["input_ids"].shape[1] :], skip_special_tokens=True)


@pytest.fixture(scope="module")
def trained(small_base: Path, facts_file: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("run")
    # Full-batch steps: the quickest way for a random model to memorise twelve answers exactly. The
    # base is given as a relative path, as users type it: the adapter records what it is. The random
    # base starts at a loss of ~20, and full-rate steps that early land in a different basin with
    # each CPU's float rounding (with 5 % warmup, 2 of 5 seeds memorised all twelve on one machine);
    # a quarter of the run in warmup memorised all twelve with each of 10 seeds.
    return out, train(
        config(Path(os.path.relpath(small_base)), facts_file, out, epochs=400, batch_size=12, warmup_ratio=0.25)
    )


def test_a_small_adapter_reproduces_its_training_answers(small_base: Path, trained) -> None:  # type: ignore[no-untyped-def]
    _, result = trained
    answers = {q: greedy(small_base, result.adapter_dir, q) for q, _ in FACTS}
    assert answers == dict(FACTS)


def test_the_run_leaves_log_plot_metadata_and_a_servable_adapter(small_base: Path, facts_file: Path, trained) -> None:  # type: ignore[no-untyped-def]
    out, result = trained
    lines = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(1, result.steps + 1))
    assert set(lines[0]) >= {"step", "total_steps", "loss", "eval_loss", "lr", "epoch", "elapsed", "remaining"}
    assert lines[-1]["loss"] < lines[0]["loss"] / 5
    assert (out / "training_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 16 and config["lora_alpha"] == 32
    assert config["bias"] == "none" and not config.get("use_dora") and not config.get("modules_to_save")
    assert sorted(config["target_modules"]) == [
        "down_proj",
        "gate_proj",
        "k_proj",
        "o_proj",
        "q_proj",
        "up_proj",
        "v_proj",
    ]
    assert config["base_model_name_or_path"] == str(small_base)
    meta = json.loads((result.adapter_dir / "training_metadata.json").read_text())
    assert meta["base_model"] == str(small_base) and meta["examples"]["train"] == 12
    from server.registry.base_model import BaseModelSpec

    assert meta["base_fingerprint"] == BaseModelSpec.from_pretrained(str(small_base)).fingerprint
    assert meta["datasets"][0]["path"] == str(facts_file) and len(meta["datasets"][0]["sha256"]) == 64
    assert (
        meta["hyperparameters"]["lr"] == 5e-3
        and meta["hyperparameters"]["epochs"] == 400
        and meta["final_train_loss"] == pytest.approx(result.train_loss)
    )
    assert {"torch", "transformers", "peft", "lora-gateway"} <= set(meta["versions"])
    from server.registry.validation import inspect_adapter

    assert (
        inspect_adapter(
            result.adapter_dir, max_lora_rank=64, max_bytes=10**9, base=BaseModelSpec.from_pretrained(str(small_base))
        ).rank
        == 16
    )


def _weights(adapter: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(adapter / "adapter_model.safetensors")


def test_resume_continues_from_the_same_step(small_base: Path, facts_file: Path, tmp_path: Path) -> None:
    common = dict(epochs=2, batch_size=2, grad_accum=2, dropout=0.1, val_split=0.25)  # 9 train: 3 steps an epoch
    straight = train(config(small_base, facts_file, tmp_path / "straight", **common))
    first = train(config(small_base, facts_file, tmp_path / "split", max_steps=4, save_steps=2, **common))
    assert first.steps == 4 and (tmp_path / "split" / "checkpoint-4").is_dir()
    resumed = train(config(small_base, facts_file, tmp_path / "split", resume="latest", **common))
    assert resumed.steps == straight.steps == 6
    expected, actual = _weights(straight.adapter_dir), _weights(resumed.adapter_dir)
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-5, atol=1e-6)
    steps = [json.loads(line)["step"] for line in (tmp_path / "split" / "trainer_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    evals = [
        json.loads(line)["eval_loss"] for line in (tmp_path / "split" / "trainer_log.jsonl").read_text().splitlines()
    ]
    assert evals[2] is not None and evals[5] is not None  # evaluated at each epoch's end


def test_ctrl_c_saves_a_checkpoint_that_resumes(
    small_base: Path, facts_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.trainer import artifacts

    original = artifacts.RunLog.write

    def interrupt_at_step_3(self, **fields):  # type: ignore[no-untyped-def]
        original(self, **fields)
        if fields["step"] == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(artifacts.RunLog, "write", interrupt_at_step_3)
    with pytest.raises(TrainingInterrupted) as caught:
        train(config(small_base, facts_file, tmp_path / "run", epochs=2, save_total_limit=1))
    assert caught.value.checkpoint.name == "checkpoint-3"
    monkeypatch.setattr(artifacts.RunLog, "write", original)
    result = train(config(small_base, facts_file, tmp_path / "run", epochs=2, resume=str(caught.value.checkpoint)))
    assert result.steps == 6


def test_bad_data_is_refused_before_training_with_every_line(small_base: Path, tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"query": "q", "response": "a"}\n{"query": 1, "response": "a"}\n{oops\n')
    with pytest.raises(TrainingError) as caught:
        train(config(small_base, path, tmp_path / "run"))
    assert f"{path}:2: query must be a string" in str(caught.value) and f"{path}:3: bad JSON" in str(caught.value)


def test_fewer_than_ten_examples_need_allow_small(small_base: Path, tmp_path: Path) -> None:
    path = tmp_path / "few.jsonl"
    path.write_text("".join(json.dumps({"query": q, "response": a}) + "\n" for q, a in FACTS[:3]))
    with pytest.raises(TrainingError, match="--allow-small"):
        train(config(small_base, path, tmp_path / "run"))
    assert train(config(small_base, path, tmp_path / "run", allow_small=True, epochs=1)).steps == 1


def test_publishes_into_the_adapters_directory(small_base: Path, facts_file: Path, tmp_path: Path) -> None:
    result = train(
        config(
            small_base, facts_file, tmp_path / "run", publish=True, adapters_dir=str(tmp_path / "adapters"), epochs=1
        )
    )
    assert result.published_to == tmp_path / "adapters" / "facts"
    assert (result.published_to / "training_metadata.json").is_file()


def test_export_writes_a_merged_model_that_answers_the_same(small_base: Path, trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from server.trainer.export import export_merged

    _, result = trained
    merged = export_merged(str(small_base), str(result.adapter_dir), str(tmp_path / "merged"))
    tokenizer = AutoTokenizer.from_pretrained(merged)
    model = AutoModelForCausalLM.from_pretrained(merged)
    question, answer = FACTS[0]
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
    )
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=24, do_sample=False)
    assert tokenizer.decode(out[0][ids["input_ids"].shape[1] :], skip_special_tokens=True) == answer


def test_an_eval_set_is_checked_before_training_and_published_as_the_adapters_gate(
    small_base: Path, facts_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from server.cli import main
    from server.registry.gate_spec import read_gate

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "Free shipping?", "reference": "Above 99 yuan."}\n{"question": ""}\n')
    args = ["train", "--base", str(small_base), "--data", str(facts_file), "--name", "facts"]
    args += ["--output-dir", str(tmp_path / "run"), "--adapters-dir", str(tmp_path / "adapters")]
    assert main([*args, "--eval-set", str(bad), "--gate-min", "exact=0.9"]) == 2
    assert f"{bad}:2: each record needs" in capsys.readouterr().err
    assert not (tmp_path / "run" / "adapter").exists()  # refused before any training
    with pytest.raises(SystemExit):
        main([*args, "--eval-set", str(bad), "--gate-min", "exact"])
    assert "is not METRIC=NUMBER" in capsys.readouterr().err

    gated = config(small_base, facts_file, tmp_path / "run", publish=True, adapters_dir=str(tmp_path / "adapters"))
    gated.epochs, gated.eval_set, gated.gate_min = 1, str(facts_file), {"exact": 0.5}
    result = train(gated)
    assert result.published_to is not None
    spec = json.loads((result.published_to / "eval.json").read_text())
    assert spec["min"] == {"exact": 0.5} and spec["max_drop"] == {} and spec["test_set"] == "eval_set.jsonl"
    gate = read_gate(result.published_to)  # the gateway reads it as written
    assert gate is not None and len(gate.items) == len(FACTS) and gate.items[0].reference == FACTS[0][1]


def test_init_adapter_names_are_resolved_or_refused_before_training(
    tmp_path: Path, trained_adapters: dict[str, Path]
) -> None:
    import shutil

    from server.trainer.config import TrainingError
    from server.trainer.init_adapter import resolve_init_adapter

    adapters = tmp_path / "adapters"
    shutil.copytree(trained_adapters["alpha"], adapters / "shop")
    by_name = resolve_init_adapter("shop", adapters)
    assert by_name.rank == 8 and set(by_name.target_modules) >= {"q_proj", "down_proj"}
    assert resolve_init_adapter(str(trained_adapters["beta"]), adapters).path == trained_adapters["beta"]
    for spec, why in (("nobody", "not a directory"), ("shop@3", "no kept version 3 of 'shop'")):
        with pytest.raises(TrainingError, match=why):
            resolve_init_adapter(spec, adapters)
    (adapters / "pickled").mkdir()
    (adapters / "pickled" / "adapter_config.json").write_text("{}")
    (adapters / "pickled" / "adapter_model.bin").write_bytes(b"x")
    with pytest.raises(TrainingError, match="safetensors only"):
        resolve_init_adapter("pickled", adapters)


def test_init_adapter_by_name_continues_from_what_serves_not_from_refused_files(
    tmp_path: Path, trained_adapters: dict[str, Path]
) -> None:
    """After a gate refused new files, NAME is the version still serving (the newest kept one),
    not the refused files in the directory; once the files are a kept version, they are."""
    import asyncio
    import shutil

    from server.registry.validation import file_sha256
    from server.terms.layout import WEIGHTS_FILE
    from server.trainer.init_adapter import resolve_init_adapter
    from tests.registry.test_registry import RecordingEngine, make_registry

    adapters = tmp_path / "adapters"
    registry = make_registry(adapters, RecordingEngine())
    asyncio.run(registry.install("shop", trained_adapters["alpha"]))  # v1, proven and serving
    serving = file_sha256(trained_adapters["alpha"] / WEIGHTS_FILE)
    init = resolve_init_adapter("shop", adapters)
    assert (init.version, init.sha256) == (1, serving) and "the files in" in init.why

    shutil.copyfile(trained_adapters["beta"] / WEIGHTS_FILE, adapters / "shop" / WEIGHTS_FILE)  # refused files
    init = resolve_init_adapter("shop", adapters)
    assert (init.version, init.sha256) == (1, serving) and "never served" in init.why
    assert "v1" in init.describe() and init.summary()["version"] == 1
