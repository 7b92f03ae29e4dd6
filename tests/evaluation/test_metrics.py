"""Reference scores, character by character (server/evaluation/metrics.py)."""

from __future__ import annotations

import pytest

from server.evaluation.metrics import char_f1, exact_match, normalize, rouge_l, scores


def test_normalizing_folds_width_case_spaces_and_punctuation() -> None:
    assert normalize("满９９元 包邮。") == normalize("满99元包邮") == "满99元包邮"
    assert normalize("Hello, World!") == "helloworld"


@pytest.mark.parametrize(
    ("answer", "reference", "exact", "f1", "rouge"),
    [
        ("全场满99元包邮。", "全场满99元包邮", 1.0, 1.0, 1.0),
        ("满99元包邮", "全场满99元包邮", 0.0, 2 * 1 * (6 / 8) / (1 + 6 / 8), 2 * 1 * (6 / 8) / (1 + 6 / 8)),
        ("邮包元99满", "满99元包邮", 0.0, 1.0, 1 / 3),  # same characters, order lost: only "99" in sequence
        ("退货", "全场满99元包邮", 0.0, 0.0, 0.0),
    ],
)
def test_scores(answer: str, reference: str, exact: float, f1: float, rouge: float) -> None:
    assert exact_match(answer, reference) == exact
    assert char_f1(answer, reference) == pytest.approx(f1)
    assert rouge_l(answer, reference) == pytest.approx(rouge)


def test_no_reference_no_scores() -> None:
    assert scores("anything", None) == {}
    assert set(scores("a", "a")) == {"exact", "f1", "rouge_l"}
