"""An adapter's eval gate: the test set and thresholds a new version must pass before it serves.

The gate lives beside the weights, as ``eval.json`` (and the test set it names, ``eval_set.jsonl`` by
default), so it is copied, versioned and published with the adapter like its profile::

    {
      "test_set": "eval_set.jsonl",
      "min": {"exact": 0.9, "judge": 8.0},
      "max_drop": {"judge": 0.3},
      "max_drop_on": "interval",
      "judge": "qwen-max",
      "max_tokens": 256,
      "timeout_s": 300
    }

``min``: the candidate's mean score must reach each value. ``max_drop``: it must not score lower
than the version serving now by more than each value (skipped for a first version). Both versions
answer the same items, so the change is paired, and by default (``"max_drop_on": "interval"``) the
*lower bound* of its 95 % paired bootstrap interval is held to ``max_drop``: a version passes only
when the data show it is at most that much worse, never on a lucky draw of items (a small test
set gives a wide interval: use more items, or a larger ``max_drop``). ``"max_drop_on": "mean"``
holds the point estimate instead, as gates written before intervals did. Metrics are
``exact``, ``f1`` and ``rouge_l`` (``server.evaluation.metrics``, over items with a reference) and
``judge`` (the rubric judge's mean total, out of 10 with the default rubric). The judge is the
served base model unless ``judge`` names one of the judges the operator configured (``--judges``):
the file names a judge, never a URL or a key, because an adapter directory is data. Answers are greedy
(temperature 0), so a gate's verdict is repeatable.

This module is the file: its spec, reading it (``read_gate`` refuses a bad one with ``bad_eval_spec``),
writing it (``train --eval-set``), the decision from scores (``failures``) and the outcome a run
records. It lives with the registry beside ``profile.json`` and ``split.json``, whose validation
reads it; running a gate (asking models, the judge) is evaluation's (``server.evaluation.gate``),
which the gateway hands the registry as its ``prove`` step.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..datasets.testset import EvalItem, TestSetError, load_test_set
from ..errors import AdapterRejected
from ..jsonbounds import read_adapter_json
from ..stats import Interval
from ..terms.layout import DEFAULT_TEST_SET, GATE_FILE
from ..terms.scores import JUDGE_METRIC, JUDGE_NAME, METRICS, REFERENCE_METRICS, Metric

MAX_GATE_BYTES = 64 * 1024
MAX_TEST_SET_BYTES = 4 * 1024 * 1024
MAX_ITEMS = 500


class GateSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    test_set: str = Field(default=DEFAULT_TEST_SET, max_length=255)
    min: dict[Metric, float] = Field(default_factory=dict)
    max_drop: dict[Metric, float] = Field(default_factory=dict)
    max_drop_on: Literal["interval", "mean"] = "interval"
    judge: str | None = Field(default=None, pattern=f"^{JUDGE_NAME.pattern}$")
    max_tokens: int = Field(default=256, ge=1, le=8192)
    timeout_s: float = Field(default=300.0, gt=0, le=3600)

    @field_validator("judge", mode="before")
    @classmethod
    def _a_name(cls, value: object) -> object:
        if isinstance(value, dict):
            raise ValueError(
                "judge names one of the gateway's judges (its --judges file), never an endpoint: "
                "an adapter directory cannot say where the gateway sends requests or keys"
            )
        return value

    @field_validator("test_set")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not value or "/" in value or "\\" in value or value.startswith("."):
            raise ValueError("test_set must name a file in the adapter's directory")
        return value

    @model_validator(mode="after")
    def _has_thresholds(self) -> GateSpec:
        if not self.min and not self.max_drop:
            raise ValueError("a gate needs at least one threshold in `min` or `max_drop`")
        if any(value < 0 for value in self.max_drop.values()):
            raise ValueError("max_drop values must not be negative")
        return self

    @property
    def metrics(self) -> set[str]:
        return {*self.min, *self.max_drop}

    @property
    def uses_judge(self) -> bool:
        return JUDGE_METRIC in self.metrics


@dataclass(frozen=True)
class Gate:
    """A validated gate: its spec and the questions it asks."""

    spec: GateSpec
    items: tuple[EvalItem, ...]

    def summary(self) -> dict[str, Any]:
        return {**self.spec.model_dump(mode="json", exclude={"judge"}), "questions": len(self.items)}


@dataclass(frozen=True)
class GateOutcome:
    """One run of a gate: the candidate's scores, the current version's, and what failed."""

    version: int
    sha256: str
    scores: dict[str, float]
    current: dict[str, float] | None = None  # the version serving when the gate ran
    current_version: int | None = None
    failures: tuple[str, ...] = ()
    seconds: float = 0.0
    judge_errors: int = 0
    notes: tuple[str, ...] = field(default=())
    changes: dict[str, Interval] = field(default_factory=dict)  # paired, candidate minus serving

    @property
    def passed(self) -> bool:
        return not self.failures

    def summary(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "version": self.version,
            "sha256": self.sha256,
            "scores": {k: round(v, 4) for k, v in self.scores.items()},
            "current_version": self.current_version,
            "current_scores": None if self.current is None else {k: round(v, 4) for k, v in self.current.items()},
            "changes": {k: v.summary() for k, v in self.changes.items()},
            "failures": list(self.failures),
            "judge_errors": self.judge_errors,
            "seconds": round(self.seconds, 2),
        }

    def describe(self) -> str:
        """One line for the log and the rejection: the scores and each threshold missed."""
        scores = ", ".join(f"{k} {v:.3f}" for k, v in sorted(self.scores.items()))
        if self.current is not None:
            scores += " (serving v{}: {})".format(
                self.current_version, ", ".join(f"{k} {v:.3f}" for k, v in sorted(self.current.items()))
            )
        verdict = "passed" if self.passed else "failed: " + "; ".join(self.failures)
        return f"eval gate {verdict} [{scores}] in {self.seconds:.1f} s"


def read_gate(adapter_dir: Path) -> Gate | None:
    """The adapter's gate, None when it has none; ``AdapterRejected`` (``bad_eval_spec``) naming
    the problem (the test set's bad records by ``FILE:LINE``) when it cannot be used."""
    spec = read_adapter_json(adapter_dir, GATE_FILE, GateSpec, max_bytes=MAX_GATE_BYTES, reason="bad_eval_spec")
    if spec is None:
        return None
    where = f"{adapter_dir.name}: {GATE_FILE}"
    test_set = adapter_dir / spec.test_set
    if not test_set.is_file() or test_set.is_symlink():
        raise AdapterRejected("bad_eval_spec", f"{where}: its test set {spec.test_set} is not a file beside it.")
    if test_set.stat().st_size > MAX_TEST_SET_BYTES:
        raise AdapterRejected("bad_eval_spec", f"{where}: {spec.test_set} is above {MAX_TEST_SET_BYTES} bytes.")
    try:
        items = load_test_set([test_set])
    except TestSetError as exc:
        relative = str(exc).replace(str(adapter_dir) + os.sep, f"{adapter_dir.name}/")
        raise AdapterRejected(
            "bad_eval_spec", f"{where}: its test set {spec.test_set} cannot be used:\n{relative}"
        ) from None
    if not items or len(items) > MAX_ITEMS:
        raise AdapterRejected("bad_eval_spec", f"{where}: {spec.test_set} needs 1 to {MAX_ITEMS} questions.")
    needs_reference = set(REFERENCE_METRICS) & spec.metrics
    if needs_reference and not any(item.reference is not None for item in items):
        raise AdapterRejected(
            "bad_eval_spec", f"{where}: thresholds on {sorted(needs_reference)} need reference answers."
        )
    return Gate(spec, tuple(items))


def gate_files(adapter_dir: Path) -> list[str]:
    """The gate's files in ``adapter_dir`` (the spec and the test set it names), for copying an
    adapter whole; read leniently: validation is ``read_gate``'s."""
    try:
        spec = json.loads((adapter_dir / GATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    test_set = spec.get("test_set", DEFAULT_TEST_SET) if isinstance(spec, dict) else None
    if not isinstance(test_set, str) or not test_set or test_set.startswith(".") or {"/", "\\"} & set(test_set):
        return [GATE_FILE]
    return [GATE_FILE, test_set]


def plan_gate(test_set: str | Path, min: dict[str, float], max_drop: dict[str, float]) -> Gate:
    """The gate ``lora-gateway train --eval-set`` will write, checked before training starts
    (``ValueError`` naming the problem). With no thresholds given it keeps the adapter from getting
    worse: character F1 at most 0.05 below the serving version's."""
    path = Path(test_set)
    try:
        spec = GateSpec(
            test_set=f"eval_set{'.json' if path.suffix == '.json' else '.jsonl'}",
            min=min,  # type: ignore[arg-type]
            max_drop=max_drop or ({} if min else {"f1": 0.05}),  # type: ignore[arg-type]
        )
        items = load_test_set([path])
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ValueError(f"--gate-{first['loc'][0]}: {first['msg']} (metrics: {', '.join(METRICS)})") from None
    except (TestSetError, OSError) as exc:
        raise ValueError(f"--eval-set {path}: {exc}") from None
    needs_reference = set(REFERENCE_METRICS) & spec.metrics
    if needs_reference and not any(item.reference is not None for item in items):
        raise ValueError(f"--eval-set {path}: thresholds on {sorted(needs_reference)} need reference answers")
    return Gate(spec, tuple(items))


def write_gate(adapter_dir: Path, test_set: str | Path, gate: Gate) -> None:
    """Put ``gate`` (from ``plan_gate``) and a copy of its test set into ``adapter_dir``."""
    shutil.copyfile(test_set, adapter_dir / gate.spec.test_set)
    spec = gate.spec.model_dump(mode="json", exclude_none=True)
    (adapter_dir / GATE_FILE).write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")


def failures(
    spec: GateSpec,
    scores: dict[str, float],
    current: dict[str, float] | None,
    changes: dict[str, Interval] | None = None,
) -> tuple[str, ...]:
    """Every threshold ``scores`` misses, in words; empty when the gate passes. ``changes``: the
    paired interval of each metric's change from the serving version, which ``max_drop`` holds
    by its lower bound unless the spec says ``mean``."""
    missed = [
        f"{metric} {scores.get(metric, 0.0):.3f} < {floor:g}"
        for metric, floor in sorted(spec.min.items())
        if scores.get(metric, 0.0) < floor - 1e-9
    ]
    if current is None:
        return tuple(missed)
    for metric, drop in sorted(spec.max_drop.items()):
        if metric not in current:
            continue
        score = scores.get(metric, 0.0)
        point = current[metric] - score
        change = (changes or {}).get(metric) if spec.max_drop_on == "interval" else None
        side = "below" if point >= 0 else "above"
        said = f"{metric} {score:.3f} is {abs(point):.3f} {side} the serving version's {current[metric]:.3f}"
        if change is None:
            if point > drop + 1e-9:
                missed.append(f"{said} (allowed {drop:g})")
        elif -change.low > drop + 1e-9:
            missed.append(
                f"{said}, and its 95 % paired interval [{change.low:+.3f}, {change.high:+.3f}] reaches "
                f"{-change.low:.3f} below (allowed {drop:g})"
            )
    return tuple(missed)
