"""Paired comparisons in the eval report: known differences found, noise called noise, and the
intervals shown in report.md, report.json and report.html (error bars and the forest plot)."""

from __future__ import annotations

import json
from pathlib import Path

from statsmodels.stats.contingency_tables import mcnemar

from server.datasets.testset import EvalItem
from server.evaluation.compare import compare, item_scores
from server.evaluation.report import write_report
from server.evaluation.runner import Answer, Sampling, Target


def _items(n: int) -> list[EvalItem]:
    return [
        EvalItem(({"role": "user", "content": f"q{i}"},), f"answer {i}", None, f"t.jsonl:{i + 1}") for i in range(n)
    ]


def _answers(label: str, items: list[EvalItem], right: set[int]) -> list[Answer]:
    return [
        Answer(label, item.key, item.reference if i in right else "zzz", 0.01, 0.02, 3) for i, item in enumerate(items)
    ]


TARGETS = [Target("base", "http://x/v1", "base"), Target("tuned", "http://x/v1", "tuned")]


def test_a_real_improvement_is_found_with_its_interval_and_mcnemar() -> None:
    items = _items(40)
    answers = _answers("base", items, set(range(0, 40, 4))) + _answers(
        "tuned", items, set(range(0, 40, 4)) | set(range(1, 40, 2))
    )
    rows = {r["metric"]: r for r in compare(TARGETS, item_scores(items, answers))}
    exact = rows["exact"]
    assert exact["n"] == 40 and exact["difference"]["estimate"] == 0.5 and exact["significant"]
    assert 0 < exact["difference"]["low"] < 0.5 < exact["difference"]["high"] <= 1
    assert exact["mcnemar"]["model_only"] == 20 and exact["mcnemar"]["baseline_only"] == 0
    assert exact["mcnemar"]["p_value"] == mcnemar([[10, 0], [20, 10]], exact=True).pvalue
    assert exact["verdict"].startswith("+0.50 exact [")


def test_no_difference_says_what_the_sample_can_detect() -> None:
    items = _items(24)
    answers = _answers("base", items, {0, 1, 2, 3, 4, 5}) + _answers("tuned", items, {0, 1, 2, 3, 4, 6})
    exact = {r["metric"]: r for r in compare(TARGETS, item_scores(items, answers))}["exact"]
    assert not exact["significant"] and exact["difference"]["low"] < 0 < exact["difference"]["high"]
    assert (
        exact["verdict"]
        == f"no detectable difference in exact (n = 24 can only detect ≥ {exact['min_detectable']:.2f})"
    )


def test_the_report_shows_intervals_in_every_format(tmp_path: Path) -> None:
    items = _items(30)
    answers = _answers("base", items, set(range(5))) + _answers("tuned", items, set(range(25)))
    report = write_report(tmp_path, "run", TARGETS, items, answers, Sampling(), 1.0)
    tuned = report["models"][1]
    assert tuned["intervals"]["exact"]["low"] < tuned["exact"] < tuned["intervals"]["exact"]["high"]
    saved = json.loads((tmp_path / "report.json").read_text())
    assert [r["metric"] for r in saved["comparisons"]] == ["exact", "f1", "rouge_l"]
    page = (tmp_path / "report.md").read_text()
    assert "## Against base (paired, same items)" in page and "| tuned | exact | 30 | +0.667 [" in page
    assert "- **tuned**: exact 0.833 [" in page
    html = (tmp_path / "report.html").read_text()
    assert "Difference from base (paired, 95 % intervals)" in html and "with 95 % intervals" in html


def test_items_with_tags_are_reported_by_slice(tmp_path: Path) -> None:
    from dataclasses import replace

    items = [replace(item, tags=("refund",) if i < 10 else ("shipping",)) for i, item in enumerate(_items(20))]
    answers = _answers("base", items, set(range(10, 20))) + _answers("tuned", items, set(range(20)))
    report = write_report(tmp_path, "run", TARGETS, items, answers, Sampling(), 1.0)
    by_tag = {row["tag"]: row for row in report["slices"]}
    assert by_tag["refund"]["means"]["base"]["exact"] == 0.0 and by_tag["refund"]["means"]["tuned"]["exact"] == 1.0
    assert by_tag["shipping"]["means"]["base"]["exact"] == 1.0
    refund = {c["metric"]: c for c in by_tag["refund"]["comparisons"]}["exact"]
    assert refund["significant"] and refund["difference"]["estimate"] == 1.0
    assert "| refund | 10 | tuned | exact | 1.000 | +1.00 exact [1.00, 1.00] |" in (tmp_path / "report.md").read_text()


def test_test_set_tags_are_read_and_checked(tmp_path: Path) -> None:
    import pytest

    from server.datasets.testset import TestSetError, load_test_set

    good = tmp_path / "good.jsonl"
    good.write_text(
        json.dumps({"question": "q", "tags": ["refund", "vip"]})
        + "\n"
        + json.dumps({"question": "r", "tags": "vip"})
        + "\n"
    )
    assert [item.tags for item in load_test_set([good])] == [("refund", "vip"), ("vip",)]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q"}) + "\n" + json.dumps({"question": "q", "tags": [1]}) + "\n")
    with pytest.raises(TestSetError, match="bad.jsonl:2: `tags` must be a list"):
        load_test_set([bad])
