"""``lora-gateway feedback report|export``: read the feedback database directly (no gateway needed)."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any


def add_feedback_parser(commands: Any) -> None:
    default_dir = os.environ.get("LORA_GATEWAY_ADAPTERS_DIR", "adapters")
    default_db = os.environ.get("LORA_GATEWAY_DATABASE")
    p_feedback = commands.add_parser("feedback", help="Report on, and export, the ratings users gave to answers.")
    feedback_commands = p_feedback.add_subparsers(dest="feedback_command", required=True)
    p_report = feedback_commands.add_parser("report", help="Per version: answers, ratings, worst-rated answers.")
    p_export = feedback_commands.add_parser(
        "export", help="Rated conversations as training data (corrected answers) and a review sheet (the rest)."
    )
    for sub in (p_report, p_export):
        sub.add_argument("name", help="Adapter name.")
        sub.add_argument("--since", default=None, help="Only feedback from the last period: 30m, 24h, 7d, 2w.")
        sub.add_argument(
            "--database",
            "--db",  # its first name; --database, as everywhere else
            dest="database",
            default=default_db,
            help="The gateway's --database URL [default: sqlite:///ADAPTERS_DIR/.gateway.db].",
        )
        sub.add_argument("--adapters-dir", default=default_dir, help=f"Watched directory [default {default_dir}].")
    p_report.add_argument("--json", action="store_true", help="As JSON (what GET /v1/adapters/NAME/feedback gives).")
    p_report.set_defaults(func=_cmd_report)
    p_export.add_argument("--negative", action="store_true", help="Only thumbs down and 1-2 star ratings.")
    p_export.add_argument("--version", type=int, default=None, help="Only answers of this version.")
    p_export.add_argument(
        "--out", default=None, help="Directory for dataset.jsonl and review.jsonl [default runs/feedback/NAME]."
    )
    p_export.set_defaults(func=_cmd_export)


def _open(args: argparse.Namespace) -> tuple[Any, float | None]:
    from ..database import database_url, missing_sqlite_file
    from .report import parse_since
    from .store import FeedbackStore

    url = database_url(args.database, args.adapters_dir)
    if missing_sqlite_file(url):
        raise SystemExit(f"lora-gateway: no feedback database at {url} (is the gateway started with --feedback?)")
    try:
        since = parse_since(args.since, time.time()) if args.since else None
    except ValueError as exc:
        raise SystemExit(f"lora-gateway: --since {exc}") from None
    return FeedbackStore(url), since


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import report, table

    store, since = _open(args)
    try:
        data = report(store, args.name, since=since)
    finally:
        store.close()
    print(json.dumps(data, indent=2, ensure_ascii=False) if args.json else table(data))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export

    store, since = _open(args)
    out = Path(args.out or Path("runs") / "feedback" / args.name)
    try:
        done = export(store, args.name, out, since=since, negative=args.negative, version=args.version)
    finally:
        store.close()
    print(f"{done.corrected} corrected answers -> {done.dataset} (train on it: lora-gateway train --init-adapter ...)")
    print(f"{done.to_review} answers to review -> {done.review} (write each empty assistant answer, then train on it)")
    for completion_id, why in done.left_out:
        print(f"left out {completion_id}: train would refuse it ({why})")
    if done.expired:
        print(f"{done.expired} rated answers were past the retention period and could not be exported")
    return 0
