"""The eval gate's spec (``eval.json``) and its decision, without an engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.errors import AdapterRejected
from server.registry.gate_spec import GateSpec, failures, gate_files, read_gate


def adapter_with(tmp_path: Path, spec: object, test_set: str | None = '{"question": "q?", "reference": "a"}\n') -> Path:
    directory = tmp_path / "shop"
    directory.mkdir()
    (directory / "eval.json").write_text(spec if isinstance(spec, str) else json.dumps(spec))
    if test_set is not None:
        (directory / "eval_set.jsonl").write_text(test_set)
    return directory


def test_a_valid_gate_is_read_with_its_questions(tmp_path: Path) -> None:
    gate = read_gate(adapter_with(tmp_path, {"min": {"exact": 0.9}, "max_drop": {"judge": 0.3}}))
    assert gate is not None and len(gate.items) == 1 and gate.items[0].reference == "a"
    assert gate.spec.uses_judge and gate.spec.timeout_s == 300
    assert read_gate(tmp_path) is None  # no eval.json: no gate


@pytest.mark.parametrize(
    ("spec", "test_set", "message"),
    [
        ({"min": {"bleu": 1}}, None, "min.bleu.[key]"),
        ({}, None, "a gate needs at least one threshold"),
        ({"min": {"exact": 1}, "test_set": "../elsewhere.jsonl"}, None, "test_set must name a file"),
        ({"min": {"exact": 1}, "timeout_s": 0}, None, "timeout_s"),
        ({"min": {"exact": 1}, "judge": {"url": "http://169.254.169.254/", "model": "x"}}, None, "never an endpoint"),
        ({"min": {"exact": 1}, "judge": "../x"}, None, "judge"),
        ({"min": {"exact": float("nan")}}, None, "min.exact"),
        ({"min": {"exact": 1}, "test_set": "x" * 5000}, None, "test_set"),
        ("{not json", None, "eval.json"),
        ({"min": {"exact": 1}}, "", "eval_set.jsonl cannot be used:\nthe test set holds no questions"),
        ({"min": {"exact": 1}}, '{"question": "no reference"}\n', "need reference answers"),
        ({"min": {"judge": 8}}, '{"question": "q"}\n{"question": ""}\n', "shop/eval_set.jsonl:2: each record needs"),
    ],
)
def test_a_bad_gate_refuses_the_version_with_a_reason(
    tmp_path: Path, spec: object, test_set: str | None, message: str
) -> None:
    directory = adapter_with(tmp_path, spec, '{"question": "q?", "reference": "a"}\n' if test_set is None else test_set)
    with pytest.raises(AdapterRejected) as raised:
        read_gate(directory)
    assert raised.value.reason == "bad_eval_spec" and message in str(raised.value)


def test_a_missing_test_set_is_named(tmp_path: Path) -> None:
    with pytest.raises(AdapterRejected, match="its test set eval_set.jsonl is not a file beside it"):
        read_gate(adapter_with(tmp_path, {"min": {"exact": 1}}, test_set=None))


def test_failures_name_each_threshold_missed_and_skip_drops_without_a_serving_version() -> None:
    spec = GateSpec(min={"exact": 0.9, "f1": 0.5}, max_drop={"f1": 0.1})
    assert failures(spec, {"exact": 1.0, "f1": 0.8}, None) == ()
    assert failures(spec, {"exact": 1.0, "f1": 0.8}, {"f1": 0.85}) == ()  # 0.05 below: allowed
    assert failures(spec, {"exact": 0.5, "f1": 0.6}, {"f1": 0.9}) == (
        "exact 0.500 < 0.9",
        "f1 0.600 is 0.300 below the serving version's 0.900 (allowed 0.1)",
    )


def test_thresholds_hold_exactly_at_their_boundary() -> None:
    """A score at a floor passes and one a hair below fails; a drop of exactly ``max_drop`` passes
    and one a hair more fails (so neither threshold can be loosened unnoticed)."""
    spec = GateSpec(min={"exact": 0.9}, max_drop={"f1": 0.1})
    assert failures(spec, {"exact": 0.9, "f1": 0.8}, {"f1": 0.9}) == ()
    assert failures(spec, {"exact": 0.89, "f1": 0.8}, {"f1": 0.9}) == ("exact 0.890 < 0.9",)
    assert failures(spec, {"exact": 0.9, "f1": 0.79}, {"f1": 0.9}) == (
        "f1 0.790 is 0.110 below the serving version's 0.900 (allowed 0.1)",
    )
    assert failures(GateSpec(max_drop={"f1": 0.0}), {"f1": 0.899}, {"f1": 0.9}) != ()


def test_gate_files_name_the_spec_and_its_test_set_for_copying(tmp_path: Path) -> None:
    directory = adapter_with(tmp_path, {"min": {"exact": 1}, "test_set": "cases.jsonl"})
    assert gate_files(directory) == ["eval.json", "cases.jsonl"]
    (directory / "eval.json").write_text(json.dumps({"test_set": "../../etc/passwd"}))
    assert gate_files(directory) == ["eval.json"]  # never a path outside the adapter
    assert gate_files(tmp_path) == []


def test_max_drop_holds_the_lower_bound_of_the_paired_interval_by_default() -> None:
    """A point estimate inside the allowance does not pass on luck when the interval reaches past
    it; a tight interval around the same estimate passes; ``max_drop_on: mean`` keeps the old rule."""
    from server.stats import Interval, paired_bootstrap

    spec = GateSpec(max_drop={"f1": 0.1})
    assert spec.max_drop_on == "interval"
    wide = {"f1": Interval(-0.05, -0.2, 0.1)}
    assert failures(spec, {"f1": 0.85}, {"f1": 0.9}, wide) == (
        "f1 0.850 is 0.050 below the serving version's 0.900, and its 95 % paired interval "
        "[-0.200, +0.100] reaches 0.200 below (allowed 0.1)",
    )
    assert failures(spec, {"f1": 0.85}, {"f1": 0.9}, {"f1": Interval(-0.05, -0.08, -0.02)}) == ()
    assert failures(GateSpec(max_drop={"f1": 0.1}, max_drop_on="mean"), {"f1": 0.85}, {"f1": 0.9}, wide) == ()
    # Many items, each a little worse: the interval is tight, and it is what decides.
    serving = [0.9] * 50
    candidate = [0.9 - 0.04 * (i % 2) for i in range(50)]
    assert failures(spec, {"f1": 0.88}, {"f1": 0.9}, {"f1": paired_bootstrap(serving, candidate)}) == ()
    # A few items, one much worse: the mean drop is 0.06, but the interval reaches 0.18.
    few = paired_bootstrap([0.9] * 5, [0.9, 0.9, 0.9, 0.9, 0.6])
    assert failures(spec, {"f1": 0.84}, {"f1": 0.9}, {"f1": few}) != ()
