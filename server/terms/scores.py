"""The scores an evaluation reports and a gate can hold a version to: one table that the scorer,
the gate's spec, the report, the HTML charts, the retention check and the CLI's help all read.

Reference scores compare an answer with the reference answer an item carries (``evaluation.metrics``
computes them, Chinese-aware); the judge's is the rubric judge's mean total, out of 10 with the
default rubric. A new reference metric is one row here and one function there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Metric = Literal["exact", "f1", "rouge_l", "judge"]


@dataclass(frozen=True)
class Score:
    name: Metric
    label: str  # as a report's column heads it
    needs_reference: bool  # computed against an item's reference answer
    retained: bool = False  # followed by the retention check (general skills kept after training)


SCORES: tuple[Score, ...] = (
    Score("exact", "exact", needs_reference=True),
    Score("f1", "char F1", needs_reference=True, retained=True),
    Score("rouge_l", "ROUGE-L", needs_reference=True, retained=True),
    Score("judge", "judge", needs_reference=False),
)
METRICS: tuple[Metric, ...] = tuple(score.name for score in SCORES)
REFERENCE_METRICS: tuple[Metric, ...] = tuple(score.name for score in SCORES if score.needs_reference)
RETAINED_METRICS: tuple[Metric, ...] = tuple(score.name for score in SCORES if score.retained)
LABELS: dict[str, str] = {score.name: score.label for score in SCORES}

# A judge is named, never addressed, by what an adapter directory or a request says (--judges maps
# each name to an endpoint), so the name is the shared term and its form is checked everywhere.
JUDGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
JUDGE_METRIC: Metric = "judge"
