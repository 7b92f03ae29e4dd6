"""Blind rating sheets out, raters' sheets in, trimmed means per model (server/evaluation/ratings.py)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from server.datasets.testset import EvalItem
from server.evaluation.judge import DEFAULT_RUBRIC
from server.evaluation.ratings import RatingError, export_sheet, import_sheets, trimmed_mean
from server.evaluation.runner import Answer

ITEMS = [EvalItem(({"role": "user", "content": f"q{i}"},), f"r{i}", None, f"t:{i}") for i in range(2)]
ANSWERS = [Answer(model, item.key, f"{model} says {item.key}", 0.1, 0.5, 5) for model in ("a", "b") for item in ITEMS]


def test_trimmed_mean_drops_the_extremes_from_three_raters() -> None:
    assert trimmed_mean([10, 2, 6]) == 6 and trimmed_mean([4, 8]) == 6 and trimmed_mean([1, 5, 6, 9]) == 5.5


def test_the_sheet_is_blind_and_the_ratings_come_back_per_model(tmp_path: Path) -> None:
    sheet = export_sheet(tmp_path, ANSWERS, ITEMS, DEFAULT_RUBRIC)
    rows = list(csv.DictReader(sheet.open(encoding="utf-8-sig")))
    assert len(rows) == 4 and all(len(row["answer_id"]) == 8 for row in rows)  # opaque ids
    assert set(rows[0]) >= {"question", "reference", "answer", "accuracy", "fluency", "comment"}
    assert "model" not in rows[0]
    raters = []
    for r, base in enumerate([(3, 2, 2, 1, 2), (1, 1, 1, 0, 1), (2, 2, 2, 1, 2)]):  # totals 10, 4, 9
        path = tmp_path / f"rater{r}.csv"
        with path.open("w", encoding="utf-8-sig", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(rows[0]))
            writer.writeheader()
            for row in rows:
                scored = dict(
                    zip(("accuracy", "politeness", "completeness", "proactivity", "fluency"), base, strict=True)
                )
                writer.writerow({**row, **scored})
        raters.append(path)
    result = import_sheets(tmp_path, raters, DEFAULT_RUBRIC)
    assert result == {"a": {"human_total": 9.0, "rated_answers": 2}, "b": {"human_total": 9.0, "rated_answers": 2}}


def test_a_foreign_or_bad_sheet_names_the_line(tmp_path: Path) -> None:
    export_sheet(tmp_path, ANSWERS, ITEMS, DEFAULT_RUBRIC)
    bad = tmp_path / "bad.csv"
    bad.write_text("answer_id,accuracy,politeness,completeness,proactivity,fluency\nzzzz,1,1,1,1,1\n")
    with pytest.raises(RatingError, match=r"bad.csv:2: unknown answer_id"):
        import_sheets(tmp_path, [bad], DEFAULT_RUBRIC)


def test_a_cell_that_starts_like_a_formula_is_text_in_the_sheet(tmp_path: Path) -> None:
    hostile = [Answer("a", ITEMS[0].key, '=HYPERLINK("http://x","click")', 0.1, 0.5, 5)]
    rows = list(csv.DictReader(export_sheet(tmp_path, hostile, ITEMS, DEFAULT_RUBRIC).open(encoding="utf-8-sig")))
    assert rows[0]["answer"] == '\'=HYPERLINK("http://x","click")'


def test_charts_show_model_names_that_look_like_mathtext() -> None:
    from server.evaluation.html import _charts

    models = [{"model": "$\\foo{$", "exact": 1.0, "ttft_p50_s": 0.1, "tokens_per_s": 3.0}]
    comparisons = [
        {
            "model": "$\\foo{$",
            "baseline": "$x",
            "metric": "exact",
            "difference": {"estimate": 0.2, "low": 0.1, "high": 0.3},
            "significant": True,
        }
    ]
    assert len(_charts(models, comparisons)) == 3  # matplotlib's mathtext would raise on the name


def test_a_run_name_is_one_directory_under_out() -> None:
    from server.evaluation.cli import run_name

    assert run_name("shop-v2.1") == "shop-v2.1" and run_name(None) is None
    for bad in ("../../..", "a/b", "..", ".hidden", ""):
        with pytest.raises(SystemExit, match="a run name is"):
            run_name(bad)
