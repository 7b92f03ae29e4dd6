"""``lora-gateway adapters ...``: the adapters directory from the command line, no gateway needed
(publish, rollback, list, history, pin, unpin, split, promote, abort, remove); and the wait, shared
with ``train``, until a running gateway serves what was published (``served.py``). Imports stay
inside the commands, so ``lora-gateway --help`` answers at once."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def add_adapters_parser(commands: Any) -> None:
    p_adapters = commands.add_parser("adapters", help="Manage the adapters directory.")
    adapter_commands = p_adapters.add_subparsers(dest="adapters_command", required=True)
    default_dir = os.environ.get("LORA_GATEWAY_ADAPTERS_DIR", "adapters")
    p_publish = adapter_commands.add_parser(
        "publish", help="Copy an adapter into the directory atomically (new version if NAME exists)."
    )
    p_publish.add_argument(
        "source",
        help="Directory with adapter_config.json and adapter_model.safetensors, or a URL: s3://BUCKET/PREFIX "
        "(any enabled fsspec scheme), hf://ORG/REPO[@REVISION][/FOLDER]; credentials from the environment.",
    )
    p_publish.add_argument("--name", required=True, help="Model id to publish it as.")
    p_publish.add_argument("--adapters-dir", default=default_dir, help=f"Watched directory [default {default_dir}].")
    p_publish.add_argument(
        "--base", default=None, help="Check shapes against this base [default: the base the adapter names, if local]."
    )
    p_publish.add_argument(
        "--max-lora-rank", type=int, default=64, help="Refuse ranks above this, as the gateway does [default 64]."
    )
    p_publish.add_argument(
        "--force", action="store_true", help="Publish without checking (the gateway still refuses a bad adapter)."
    )
    add_wait_flags(p_publish)
    p_publish.set_defaults(func=_cmd_adapters_publish)
    p_rollback = adapter_commands.add_parser(
        "rollback", help="Republish a kept version (default: the newest one unlike the current files)."
    )
    p_rollback.add_argument("name")
    p_rollback.add_argument(
        "version", nargs="?", type=int, default=None, help="Version number (see GET /v1/adapters: kept_versions)."
    )
    p_rollback.add_argument("--adapters-dir", default=default_dir, help=f"Watched directory [default {default_dir}].")
    p_rollback.set_defaults(func=_cmd_adapters_rollback)
    p_list = adapter_commands.add_parser(
        "list", help="Every adapter in the directory: which kept version its files are, kept and pinned versions."
    )
    p_list.add_argument("--adapters-dir", default=default_dir, help=f"Watched directory [default {default_dir}].")
    p_list.add_argument("--json", action="store_true", help="As JSON.")
    p_list.set_defaults(func=_cmd_adapters_list)
    p_history = adapter_commands.add_parser("history", help="The kept versions of an adapter, newest first.")
    p_history.add_argument("name")
    p_history.add_argument("--json", action="store_true", help="As JSON (what GET /v1/adapters/NAME/versions gives).")
    p_history.add_argument("--adapters-dir", default=default_dir, help=f"Watched directory [default {default_dir}].")
    p_history.set_defaults(func=_cmd_adapters_history)
    for verb, text in (("pin", "Keep a version whatever the retention."), ("unpin", "Let retention delete it again.")):
        p_pin = adapter_commands.add_parser(verb, help=text)
        p_pin.add_argument("name")
        p_pin.add_argument("version", type=int)
        p_pin.add_argument("--adapters-dir", default=default_dir, help=f"Watched directory [default {default_dir}].")
        p_pin.set_defaults(func=_cmd_adapters_pin)
    add_split_parsers(adapter_commands, default_dir)
    p_remove = adapter_commands.add_parser("remove", help="Remove an adapter from the directory.")
    p_remove.add_argument("name")
    p_remove.add_argument("--adapters-dir", default=default_dir, help=f"Watched directory [default {default_dir}].")
    p_remove.set_defaults(func=_cmd_adapters_remove)


def _cmd_adapters_publish(args: argparse.Namespace) -> int:
    from .publish import publish_adapter
    from .served import rejections
    from .validation import AdapterIncomplete, AdapterRejected

    replaced = (Path(args.adapters_dir) / args.name).exists()
    rejected_before = rejections(args.gateway) if args.wait else None
    try:
        with _local(args.source, Path(args.adapters_dir)) as source:
            target = publish_adapter(
                source, args.name, args.adapters_dir, validate=None if args.force else _publish_check(args)
            )
    except (AdapterRejected, AdapterIncomplete) as exc:
        raise SystemExit(f"lora-gateway: not published: {exc}") from None
    from ..tenancy.audit import audit_cli

    audit_cli(args.adapters_dir, "adapter.publish", args.name, source=str(args.source), forced=args.force)
    print(f"Published {args.name} to {target}; a gateway watching {args.adapters_dir} serves it as {args.name!r}.")
    if replaced:
        print(
            f"It replaced the previous files of {args.name}; versions a gateway served are kept: "
            f"`lora-gateway adapters rollback {args.name}` brings the last one back."
        )
    return await_serving(args, args.name, target, rejected_before)


@contextmanager
def _local(source: str, adapters_dir: Path) -> Iterator[Path]:
    """``source`` as a local directory: a URL (s3://, hf://) is fetched into staging first."""
    from .sources import config_from_env, fetched, is_remote

    if not is_remote(source):
        yield Path(source)
        return
    print(f"Fetching {source} ...", file=sys.stderr)
    with fetched(source, adapters_dir, config_from_env(), requested=False) as staged:
        yield staged


def _publish_check(args: argparse.Namespace) -> Any:
    """What can be checked without a gateway: format, headers, rank, DoRA/bias, finite weights, and
    the shapes against the base (``--base``, or the base the adapter names when it is a local model)."""
    from ..terms.layout import WEIGHTS_FILE
    from .base_model import BaseModelSpec
    from .validation import check_finite, declared_base, inspect_adapter

    def check(staged: Path) -> None:
        base_name = args.base or declared_base(staged)
        local = base_name is not None and (Path(os.path.expanduser(base_name)) / "config.json").is_file()
        base = BaseModelSpec.load(base_name) if base_name and (args.base or local) else None
        if base is None:
            print(
                f"note: the base model {base_name!r} is not readable here, so shapes were not checked (pass --base)",
                file=sys.stderr,
            )
        inspect_adapter(staged, max_lora_rank=args.max_lora_rank, max_bytes=2**62, base=base)
        check_finite(staged / WEIGHTS_FILE)

    return check


def _cmd_adapters_rollback(args: argparse.Namespace) -> int:
    from .offline import directory_version
    from .publish import publish_adapter
    from .store import VersionStore

    store = VersionStore(Path(args.adapters_dir))
    current = directory_version(store, args.name)
    try:
        choice = store.rollback_target(args.name, args.version, current.path if current else None)
    except LookupError as exc:
        raise SystemExit(f"lora-gateway: {exc.args[0]}") from None
    publish_adapter(choice.path, args.name, args.adapters_dir)
    from ..tenancy.audit import audit_cli

    audit_cli(args.adapters_dir, "adapter.rollback", args.name, version=choice.number)
    print(
        f"Republished {args.name} version {choice.number} (sha256 "
        f"{choice.sha256[:12]}); a running gateway serves it now."
    )
    return 0


def _cmd_adapters_history(args: argparse.Namespace) -> int:
    from .history import history, table
    from .offline import directory_version
    from .store import VersionStore

    store = VersionStore(Path(args.adapters_dir))
    rows = history(store, args.name)
    if not rows:
        raise SystemExit(f"lora-gateway: no kept versions of {args.name!r} in {args.adapters_dir}")
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    current = directory_version(store, args.name)
    print(table(rows, current.number if current else None))
    print("(* the version the directory holds)" if current else "(the directory holds none of these versions)")
    return 0


def _cmd_adapters_list(args: argparse.Namespace) -> int:
    """Every adapter name in the directory (and every name with kept versions), read from the
    files: no gateway needed."""
    from .offline import listing

    rows = listing(Path(args.adapters_dir))
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    print(f"{'name':<24} {'directory':<22} {'kept':<16} {'pinned':<8} split")
    for row in rows:
        files = row["directory"]
        shown = "-" if files is None else (f"v{files['version']}" if files["version"] else "not proven")
        if files is not None and files["version"] is None:
            shown += f" {files['sha256'][:8]}"
        kept = ",".join(str(n) for n in row["kept"]) or "-"
        pinned = ",".join(str(n) for n in row["pinned"]) or "-"
        print(f"{row['name']:<24} {shown:<22} {kept:<16} {pinned:<8} {row['split'] or '-'}")
    return 0


def _cmd_adapters_pin(args: argparse.Namespace) -> int:
    from .store import VersionStore

    pinned = args.adapters_command == "pin"
    try:
        VersionStore(Path(args.adapters_dir)).set_pinned(args.name, args.version, pinned)
    except LookupError as exc:
        raise SystemExit(f"lora-gateway: {exc.args[0]}") from None
    from ..tenancy.audit import audit_cli

    audit_cli(args.adapters_dir, f"adapter.{args.adapters_command}", args.name, version=args.version)
    what = "pinned: retention never deletes it" if pinned else "unpinned: retention may delete it"
    print(f"{args.name} version {args.version} {what}.")
    return 0


def _cmd_adapters_remove(args: argparse.Namespace) -> int:
    from .publish import remove_adapter

    if not remove_adapter(args.name, args.adapters_dir):
        raise SystemExit(f"lora-gateway: no adapter {args.name!r} in {args.adapters_dir}")
    from ..tenancy.audit import audit_cli

    audit_cli(args.adapters_dir, "adapter.remove", args.name)
    print(f"Removed {args.name} from {args.adapters_dir}.")
    return 0


def add_wait_flags(parser: argparse.ArgumentParser) -> None:
    from .served import default_gateway

    parser.add_argument(
        "--gateway",
        default=default_gateway(),
        help="The running gateway to ask whether it serves what was published (its keys: LORA_GATEWAY_ADMIN_KEY, "
        "LORA_GATEWAY_API_KEY) [default %(default)s, or LORA_GATEWAY_PORT].",
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=600.0,
        help="Seconds to wait until it serves the new files or refuses them (0: do not wait) [default 600].",
    )


def await_serving(args: argparse.Namespace, name: str, published: Path, rejected_before: float | None) -> int:
    """Say whether the gateway serves what was just written (``registry/served.py``): 1 when it
    refused it, else 0."""
    from ..terms.layout import WEIGHTS_FILE
    from .served import wait_until_served
    from .validation import file_sha256

    if not args.wait:
        print(f"not waiting (--wait 0): {args.gateway}/v1/adapters (admin key) shows when it serves")
        return 0
    outcome = wait_until_served(
        args.gateway, name, file_sha256(published / WEIGHTS_FILE), timeout=args.wait, rejected_before=rejected_before
    )
    print(outcome.message, file=sys.stderr if outcome.served is False else sys.stdout)
    return 1 if outcome.served is False else 0


def add_split_parsers(adapter_commands: Any, default_dir: str) -> None:
    from .served import default_gateway

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
    p_report = adapter_commands.add_parser(
        "split-report",
        help="A running gateway's evidence on a split: each metric per version with its interval, and the verdict.",
    )
    p_report.add_argument("name")
    p_report.add_argument(
        "--gateway",
        default=default_gateway(),
        help="The running gateway (its admin key: LORA_GATEWAY_ADMIN_KEY) [default %(default)s].",
    )
    p_report.add_argument("--json", action="store_true", help="Print the report as JSON.")
    p_report.set_defaults(func=_cmd_split_report)
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


def _cmd_split_report(args: argparse.Namespace) -> int:
    """The split report comes from the gateway: the evidence is counted in its memory."""
    from .evidence import table
    from .served import ask, cli_keys

    data = ask(args.gateway, "GET", f"/v1/adapters/{args.name}/split", cli_keys()[0], timeout=10)
    print(json.dumps(data, indent=2) if args.json else table(data))
    return 0
