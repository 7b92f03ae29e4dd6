"""Leakage: test items found in the adapter's recorded training data, exactly or nearly; a
training file that changed since is reported as not checked."""

from __future__ import annotations

import json
from pathlib import Path

from server.datasets.testset import EvalItem
from server.evaluation.leakage import check, markdown
from server.registry.validation import file_sha256


def _item(question: str, n: int) -> EvalItem:
    return EvalItem(({"role": "user", "content": question},), None, None, f"test.jsonl:{n}")


def _adapter(tmp_path: Path) -> tuple[Path, Path]:
    data = tmp_path / "train.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": "满99元包邮吗？"}, {"role": "assistant", "content": "是的"}]},
        {
            "messages": [
                {"role": "user", "content": "How do I return a damaged item I bought last week?"},
                {"role": "assistant", "content": "Use the form."},
            ]
        },
    ]
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    adapter = tmp_path / "adapters" / "shop"
    adapter.mkdir(parents=True)
    metadata = {"datasets": [{"path": str(data), "sha256": file_sha256(data)}]}
    (adapter / "training_metadata.json").write_text(json.dumps(metadata))
    return adapter.parent, data


def test_exact_and_near_copies_are_flagged(tmp_path: Path) -> None:
    adapters, _ = _adapter(tmp_path)
    items = [
        _item("满９９元包邮吗", 1),  # full-width digits, no punctuation: the same question
        _item("How do I return a damaged item I bought last week", 2),  # near: punctuation aside, one word less
        _item("Where is my parcel?", 3),
    ]
    found = check(adapters, ["shop", "tiny-base"], items)
    assert list(found) == ["shop"]  # the base has no training record
    flagged = {f["item"]: f["match"] for f in found["shop"]["flagged"]}
    assert flagged == {"test.jsonl:1": "exact", "test.jsonl:2": "exact"}
    near = check(adapters, ["shop"], [_item("How do I return the damaged item I bought last week?", 4)])
    assert [f["match"] for f in near["shop"]["flagged"]] == ["near"]
    assert "**shop**: 2 of 3 items (2 exact, 0 near): test.jsonl:1, test.jsonl:2" in markdown(found)


def test_a_changed_training_file_is_not_checked(tmp_path: Path) -> None:
    adapters, data = _adapter(tmp_path)
    data.write_text(data.read_text(encoding="utf-8") + "\n", encoding="utf-8")
    found = check(adapters, ["shop"], [_item("满99元包邮吗？", 1)])
    assert found["shop"]["flagged"] == [] and "moved or changed" in found["shop"]["unchecked"][0]
