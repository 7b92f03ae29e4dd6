"""Test sets (server/datasets/testset.py): trainer formats and question records, bad lines by number."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.datasets.testset import TestSetError, load_test_set


def test_a_training_file_is_a_test_set_of_its_own_answers(tmp_path: Path) -> None:
    data, more = tmp_path / "faq.jsonl", tmp_path / "more.jsonl"
    turns = [{"role": "user", "content": "满多少包邮？"}, {"role": "assistant", "content": "满99元。"}]
    data.write_text(json.dumps({"messages": turns}) + "\n")
    more.write_text(json.dumps({"query": "几天发货？", "response": "三天内。", "history": [["你好", "您好！"]]}) + "\n")
    first, second = load_test_set([data, more])
    assert first.messages == ({"role": "user", "content": "满多少包邮？"},) and first.reference == "满99元。"
    assert second.question == "几天发货？" and second.reference == "三天内。" and len(second.messages) == 3
    assert first.source.endswith("faq.jsonl:1") and first.key != second.key


def test_question_records_with_optional_reference_and_rubric(tmp_path: Path) -> None:
    data = tmp_path / "questions.jsonl"
    rows = [
        {"question": "你们周末发货吗？"},
        {"question": "可以开发票吗？", "reference": "可以。", "rubric": "Must mention the invoice page."},
    ]
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    plain, noted = load_test_set([data])
    assert plain.reference is None and plain.rubric is None
    assert (noted.reference, noted.rubric) == ("可以。", "Must mention the invoice page.")


def test_bad_records_are_reported_by_line(tmp_path: Path) -> None:
    data = tmp_path / "questions.jsonl"
    data.write_text('{"question": "ok?"}\n{"question": ""}\n{oops\n{"question": "x", "reference": 3}\n')
    with pytest.raises(TestSetError) as bad:
        load_test_set([data])
    lines = str(bad.value).splitlines()
    assert [line.split(": ", 1)[0] for line in lines] == [f"{data}:3", f"{data}:2", f"{data}:4"]
