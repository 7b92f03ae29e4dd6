"""``lora-gateway keys|usage|audit``: tenants from the command line, on the gateway's database.

A running gateway sees a key created, changed or revoked here within a second (``KeyRing``).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import sys
import time
from typing import Any

from pydantic import ValidationError


def add_tenancy_parsers(commands: Any) -> None:
    default_dir = os.environ.get("LORA_GATEWAY_ADAPTERS_DIR", "adapters")
    default_db = os.environ.get("LORA_GATEWAY_DATABASE")

    def where(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--database", default=default_db, help="The gateway's --database URL [default: ADAPTERS_DIR/.gateway.db]."
        )
        parser.add_argument("--adapters-dir", default=default_dir, help=f"Watched directory [default {default_dir}].")

    p_keys = commands.add_parser("keys", help="API keys per tenant: scoped to adapters, with limits and quotas.")
    key_commands = p_keys.add_subparsers(dest="keys_command", required=True)
    p_create = key_commands.add_parser("create", help="Create a key; its secret is printed once.")
    p_create.add_argument("name", help="What the key is for (shop-a, support-bot).")
    p_create.add_argument("--tenant", default=None, help="Who it belongs to [default: NAME]; usage is per tenant.")
    _limit_flags(p_create)
    where(p_create)
    p_create.set_defaults(func=_cmd_create)
    p_list = key_commands.add_parser("list", help="Every key (never a secret).")
    p_list.add_argument("--json", action="store_true")
    where(p_list)
    p_list.set_defaults(func=_cmd_list)
    p_update = key_commands.add_parser("update", help="Change a key's scope or limits (by id, prefix or name).")
    p_update.add_argument("key")
    p_update.add_argument("--tenant", default=None)
    state = p_update.add_mutually_exclusive_group()
    state.add_argument("--enable", dest="enabled", action="store_const", const=True, default=None)
    state.add_argument("--disable", dest="enabled", action="store_const", const=False)
    _limit_flags(p_update)
    where(p_update)
    p_update.set_defaults(func=_cmd_update)
    p_revoke = key_commands.add_parser("revoke", help="Revoke a key for good (running gateways: within a second).")
    p_revoke.add_argument("key")
    where(p_revoke)
    p_revoke.set_defaults(func=_cmd_revoke)

    p_usage = commands.add_parser("usage", help="Requests, tokens and errors per tenant, key and model (billing).")
    p_usage.add_argument("--since", default="30d", help="Period: 30m, 24h, 7d, 2w [default 30d].")
    p_usage.add_argument("--csv", action="store_true", help="As CSV on stdout.")
    where(p_usage)
    p_usage.set_defaults(func=_cmd_usage)

    p_audit = commands.add_parser("audit", help="Who changed keys, adapters and splits, and when.")
    p_audit.add_argument("--since", default=None, help="Period: 30m, 24h, 7d, 2w [default: everything].")
    p_audit.add_argument("--json", action="store_true")
    where(p_audit)
    p_audit.set_defaults(func=_cmd_audit)


def _limit_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--models", default=None, help='Comma-separated adapter names and globs it may use ("*": all) [default *].'
    )
    base = parser.add_mutually_exclusive_group()
    base.add_argument("--base", dest="base", action="store_const", const=True, default=None, help="May use the base.")
    base.add_argument("--no-base", dest="base", action="store_const", const=False, help="May not use the base model.")
    parser.add_argument("--rpm", type=int, default=None, help="Requests per minute.")
    parser.add_argument("--tpm", type=int, default=None, help="Tokens (prompt + completion) per minute.")
    parser.add_argument("--tokens-per-day", type=int, default=None, help="Token quota per day.")
    parser.add_argument("--tokens-per-month", type=int, default=None, help="Token quota per month (30 days).")
    parser.add_argument("--max-concurrent", type=int, default=None, help="Requests running at once.")
    parser.add_argument("--expires", default=None, help="When it stops working: a period (90d) or a date (2027-01-31).")


def _options(args: argparse.Namespace) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    if args.models is not None:
        raw["models"] = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.base is not None:
        raw["base"] = args.base
    flags = {
        "rpm": "requests_per_minute",
        "tpm": "tokens_per_minute",
        "tokens_per_day": "tokens_per_day",
        "tokens_per_month": "tokens_per_month",
        "max_concurrent": "max_concurrent",
    }
    for flag, name in flags.items():
        if getattr(args, flag) is not None:
            raw[name] = getattr(args, flag)
    if args.expires is not None:
        raw["expires"] = _expiry(args.expires)
    return raw


def _expiry(text: str) -> float:
    from ..feedback.report import parse_since

    try:
        return 2 * time.time() - parse_since(text, time.time())  # a period from now
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise SystemExit(f"lora-gateway: --expires takes a period (90d) or a date (2027-01-31), not {text!r}") from None
    return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp()


def _open(args: argparse.Namespace) -> Any:
    from ..database import database_url, open_engine
    from .service import Tenancy

    return Tenancy(open_engine(database_url(args.database, args.adapters_dir)), [])


def _checked(model: Any, raw: dict[str, Any]) -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise SystemExit(f"lora-gateway: {where}: {first['msg']}") from None


def _cmd_create(args: argparse.Namespace) -> int:
    from .audit import cli_actor
    from .spec import NewKey

    spec = _checked(NewKey, {"name": args.name, "tenant": args.tenant, **_options(args)})
    options = {k: v for k, v in spec.changes().items() if k not in ("name", "tenant")}
    tenancy = _open(args)
    try:
        key, secret = tenancy.store.create(spec.name, spec.tenant, **options)
        detail = {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}
        tenancy.audit.record(cli_actor(), "key.create", key.id, name=key.name, tenant=key.tenant, **detail)
    finally:
        tenancy.close()
    print(f"{key.id} ({key.name}, tenant {key.tenant}) created. Its secret, shown only this once:")
    print(secret)
    return 0


def _cmd_update(args: argparse.Namespace) -> int:
    from .audit import cli_actor
    from .spec import KeyUpdate

    raw = _options(args)
    if args.tenant is not None:
        raw["tenant"] = args.tenant
    if args.enabled is not None:
        raw["enabled"] = args.enabled
    changes = _checked(KeyUpdate, raw).changes()
    tenancy = _open(args)
    try:
        key = tenancy.store.update(args.key, **changes)
        detail = {k: list(v) if isinstance(v, tuple) else v for k, v in changes.items()}
        tenancy.audit.record(cli_actor(), "key.update", key.id, **detail)
    except (LookupError, ValueError) as exc:
        raise SystemExit(f"lora-gateway: {exc.args[0]}") from None
    finally:
        tenancy.close()
    print(f"{key.id} ({key.name}) updated.")
    return 0


def _cmd_revoke(args: argparse.Namespace) -> int:
    from .audit import cli_actor

    tenancy = _open(args)
    try:
        key = tenancy.store.revoke(args.key)
        tenancy.audit.record(cli_actor(), "key.revoke", key.id, name=key.name)
        usable = [k for k in tenancy.store.all() if not k.revoked and k.enabled]
    except LookupError as exc:
        raise SystemExit(f"lora-gateway: {exc.args[0]}") from None
    finally:
        tenancy.close()
    print(f"{key.id} ({key.name}) revoked; running gateways refuse it within a second.")
    if not usable:
        print(
            "No usable key is left, and a gateway whose database has held keys keeps requiring one: every "
            "request now gets 401 unless it presents an --api-key of the server. Create a key for your "
            "clients (`lora-gateway keys create NAME`), or serve with --api-key."
        )
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    tenancy = _open(args)
    try:
        keys = tenancy.store.all()
    finally:
        tenancy.close()
    if args.json:
        print(json.dumps([k.public() for k in keys], indent=2))
        return 0
    print(f"{'id':<16} {'prefix':<12} {'name':<16} {'tenant':<16} {'models':<20} {'state':<8} limits")
    for k in keys:
        state = "revoked" if k.revoked else ("enabled" if k.usable() else "off")
        limits = ", ".join(
            f"{label} {value}"
            for label, value in (
                ("rpm", k.requests_per_minute),
                ("tpm", k.tokens_per_minute),
                ("day", k.tokens_per_day),
                ("month", k.tokens_per_month),
                ("concurrent", k.max_concurrent),
            )
            if value is not None
        )
        models = ",".join(k.models) + ("" if k.base else " (no base)")
        print(f"{k.id:<16} {k.prefix:<12} {k.name:<16} {k.tenant:<16} {models:<20} {state:<8} {limits or '-'}")
    return 0


def _cmd_usage(args: argparse.Namespace) -> int:
    from ..feedback.report import parse_since

    try:
        since = parse_since(args.since, time.time())
    except ValueError as exc:
        raise SystemExit(f"lora-gateway: --since {exc}") from None
    tenancy = _open(args)
    try:
        rows = tenancy.usage.report(since)
        names = {k.id: k.name for k in tenancy.store.all()}
    finally:
        tenancy.close()
    header = ["tenant", "key_id", "key_name", "model", "requests", "prompt_tokens", "completion_tokens", "errors"]
    table = [
        [
            r.tenant,
            r.key_id,
            names.get(r.key_id, ""),
            r.model,
            r.requests,
            r.prompt_tokens,
            r.completion_tokens,
            r.errors,
        ]
        for r in rows
    ]
    if args.csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(header)
        writer.writerows(table)
        return 0
    print(f"Usage since {args.since} ago:")
    print(f"{'tenant':<16} {'key':<16} {'model':<20} {'requests':>9} {'prompt':>10} {'completion':>11} {'errors':>7}")
    for r in rows:
        key = names.get(r.key_id, r.key_id) or "(--api-key)"
        print(
            f"{r.tenant or '-':<16} {key:<16} {r.model:<20} {r.requests:>9} {r.prompt_tokens:>10} "
            f"{r.completion_tokens:>11} {r.errors:>7}"
        )
    return 0


def _cmd_audit(args: argparse.Namespace) -> int:
    from ..feedback.report import parse_since

    try:
        since = parse_since(args.since, time.time()) if args.since else None
    except ValueError as exc:
        raise SystemExit(f"lora-gateway: --since {exc}") from None
    tenancy = _open(args)
    try:
        entries = tenancy.audit.entries(since)
    finally:
        tenancy.close()
    if args.json:
        print(json.dumps([e.__dict__ for e in entries], indent=2))
        return 0
    print(f"{'when (UTC)':<19}  {'who':<24} {'action':<16} {'target':<20} detail")
    for e in entries:
        when = dt.datetime.fromtimestamp(e.at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        print(f"{when}  {e.actor:<24} {e.action:<16} {e.target:<20} {json.dumps(e.detail, sort_keys=True)}")
    return 0
