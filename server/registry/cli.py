"""``lora-gateway adapters split/promote/abort``: traffic splits from the command line (``offline.py``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_split_parsers(adapter_commands: Any, default_dir: str) -> None:
    p_split = adapter_commands.add_parser(
        "split",
        help="Split a name's traffic between kept versions, sticky per end user (a canary, an A/B test).",
    )
    p_split.add_argument("name")
    p_split.add_argument(
        "--version",
        dest="shares",
        action="append",
        required=True,
        metavar="N=PERCENT",
        help="A version and its share of users, e.g. --version 5=90 --version 6=10 (shares sum to 100).",
    )
    p_split.add_argument(
        "--abort-error-rate", type=float, default=None, help="Abort automatically above this share of 5xx answers."
    )
    p_split.add_argument(
        "--abort-negative-rate", type=float, default=None, help="Abort automatically above this share of -1 ratings."
    )
    p_split.add_argument("--abort-window", type=float, default=300, help="Seconds the rates are measured over.")
    p_split.add_argument(
        "--abort-min-events", type=int, default=20, help="Requests (or ratings) in the window before a rate counts."
    )
    p_split.add_argument("--adapters-dir", default=default_dir, help=f"Watched directory [default {default_dir}].")
    p_split.set_defaults(func=_cmd_split)
    p_promote = adapter_commands.add_parser("promote", help="End the split: VERSION takes all traffic.")
    p_promote.add_argument("name")
    p_promote.add_argument(
        "version", nargs="?", type=int, default=None, help="Default: the split's one version besides its baseline."
    )
    p_promote.add_argument("--adapters-dir", default=default_dir, help=f"Watched directory [default {default_dir}].")
    p_promote.set_defaults(func=_cmd_end)
    p_abort = adapter_commands.add_parser("abort", help="End the split: its baseline takes all traffic again.")
    p_abort.add_argument("name")
    p_abort.add_argument("--adapters-dir", default=default_dir, help=f"Watched directory [default {default_dir}].")
    p_abort.set_defaults(func=_cmd_end, version=None)


def _cmd_split(args: argparse.Namespace) -> int:
    from .offline import start_split
    from .validation import AdapterRejected

    shares: dict[str, Any] = {}
    for item in args.shares:
        number, equals, share = item.partition("=")
        if not equals or not share.strip().lstrip("-").isdigit():
            raise SystemExit(f"lora-gateway: --version takes N=PERCENT, not {item!r}")
        shares[number.strip()] = int(share)
    raw: dict[str, Any] = {"versions": shares}
    if args.abort_error_rate is not None or args.abort_negative_rate is not None:
        raw["auto_abort"] = {
            "max_error_rate": args.abort_error_rate,
            "max_negative_rate": args.abort_negative_rate,
            "window_s": args.abort_window,
            "min_events": args.abort_min_events,
        }
    try:
        split = start_split(Path(args.adapters_dir), args.name, raw)
    except AdapterRejected as exc:
        raise SystemExit(f"lora-gateway: no split: {exc}") from None
    from ..tenancy.audit import audit_cli

    audit_cli(args.adapters_dir, "split.set", args.name, split=raw)
    print(
        f"{args.name}: {json.dumps(dict((str(v), p) for v, p in split.weights))} of users (baseline v{split.baseline})."
    )
    print("A running gateway applies it now; `lora-gateway adapters promote` or `abort` ends it.")
    return 0


def _cmd_end(args: argparse.Namespace) -> int:
    from .offline import end_split
    from .validation import AdapterRejected

    abort = args.adapters_command == "abort"
    try:
        version = end_split(Path(args.adapters_dir), args.name, args.version, abort=abort)
    except AdapterRejected as exc:
        raise SystemExit(f"lora-gateway: {exc}") from None
    from ..tenancy.audit import audit_cli

    audit_cli(args.adapters_dir, f"split.{args.adapters_command}", args.name, version=version)
    print(f"{args.name}: the split {'was aborted' if abort else 'ended'}; version {version} takes all traffic.")
    return 0
