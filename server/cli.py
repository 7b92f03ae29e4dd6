"""lora-gateway: an OpenAI-compatible server for one base model and many hot-swappable LoRA adapters.

Serving flags are generated from Settings, so every flag has its LORA_GATEWAY_* env var and default
in exactly one place. Heavy libraries (torch, transformers, peft) are imported only by the commands
that use them, so --help and the adapters commands answer at once."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .errors import first_line

if typing.TYPE_CHECKING:
    from .settings import Settings

# Commands whose flags come from Settings (pydantic-settings costs ~0.1 s to import: others skip it).
_SETTINGS_COMMANDS = ("serve", "demo")


def _add_settings_flags(
    parser: argparse.ArgumentParser, *, require_model: bool = True, defaults: dict[str, Any] | None = None
) -> None:
    """``defaults``: where a command's defaults differ from ``serve``'s (the demo captures feedback)."""
    from .settings import Settings

    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        env = f"LORA_GATEWAY_{name.upper()}"
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        default = (defaults or {}).get(name, default)
        shown = "required" if field.is_required() else ("unset" if default in (None, []) else default)
        kwargs: dict[str, Any] = {
            "help": f"{field.description} [env {env}; default {shown}]",
            "default": argparse.SUPPRESS,
        }
        origin = typing.get_origin(field.annotation)
        if origin in (list, typing.Annotated) or name == "api_key":
            kwargs["action"] = "append"
        elif field.annotation is bool:  # --allow-long-context, --no-allow-long-context
            kwargs["action"] = argparse.BooleanOptionalAction
        choices = _literal_choices(field.annotation)
        if choices:
            kwargs["choices"] = choices
        if name == "model":
            if not require_model:
                continue
            # Required unless the env var provides it (flags win over the environment).
            kwargs["required"] = env not in os.environ
        parser.add_argument(flag, **kwargs)


def _literal_choices(annotation: Any) -> list[str] | None:
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    return None


def _settings_from(args: argparse.Namespace, **overrides: Any) -> Settings:
    from pydantic import ValidationError

    from .settings import Settings

    given = {k: v for k, v in vars(args).items() if k in Settings.model_fields}
    given.update(overrides)
    try:
        return Settings(**given)
    except ValidationError as exc:
        problems = "; ".join(
            f"--{'-'.join(str(p) for p in e['loc']).replace('_', '-')}: {e['msg']}" for e in exc.errors()
        )
        raise SystemExit(f"lora-gateway: invalid settings: {problems}") from None


def serve(settings: Settings) -> None:
    """Run the gateway until Ctrl-C; a failed start-up (model, adapters dir, WeCom config) exits
    with status 1 and one line, never leaving a half-alive process behind."""
    from .app import create_app, missing_local_model
    from .evaluation.judge import JudgesConfigError
    from .integrations.wecom.config import WeComConfigError
    from .serving import run

    if settings.engine != "remote" and missing_local_model(settings.model):
        raise SystemExit(f"lora-gateway: --model {settings.model}: no such directory")
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from sqlalchemy.exc import SQLAlchemyError

    try:
        app = create_app(settings)
    except (WeComConfigError, JudgesConfigError) as exc:
        raise SystemExit(f"lora-gateway: {exc}") from None
    except SQLAlchemyError as exc:  # an unreachable or malformed --database; its password never printed
        reason = first_line(exc)
        if settings.database:
            reason = reason.replace(settings.database, _masked_url(settings.database))
        raise SystemExit(f"lora-gateway: --database: {reason}") from None
    except OSError as exc:  # the adapters directory (and the default database in it) cannot be made
        raise SystemExit(f"lora-gateway: {first_line(exc)}") from None
    run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        shutdown_timeout=settings.shutdown_timeout,
    )


def _masked_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not even a URL: show its scheme at most
        return url.split(":", 1)[0] + ":***"


def _cmd_serve(args: argparse.Namespace) -> int:
    serve(_settings_from(args))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import prepare_demo, train_demo_adapters

    model_dir = prepare_demo(args.demo_dir)
    # The demo captures conversations so the feedback loop can be tried on it (--no-feedback: off).
    feedback = {} if "feedback" in vars(args) or "LORA_GATEWAY_FEEDBACK" in os.environ else {"feedback": True}
    settings = _settings_from(
        args, model=str(model_dir), served_model_name=getattr(args, "served_model_name", "demo-base"), **feedback
    )
    if not args.no_train:
        train_demo_adapters(model_dir, settings.adapters_dir, Path(args.demo_dir) / "runs")
    print(f"Serving the offline demo model as {settings.base_model_id!r} on http://{settings.host}:{settings.port}")
    serve(settings)
    return 0


def _cmd_adapters_publish(args: argparse.Namespace) -> int:
    from .registry.publish import publish_adapter
    from .registry.served import rejections
    from .registry.validation import AdapterIncomplete, AdapterRejected

    replaced = (Path(args.adapters_dir) / args.name).exists()
    rejected_before = rejections(args.gateway) if args.wait else None
    try:
        target = publish_adapter(
            args.source, args.name, args.adapters_dir, validate=None if args.force else _publish_check(args)
        )
    except (AdapterRejected, AdapterIncomplete) as exc:
        raise SystemExit(f"lora-gateway: not published: {exc}") from None
    from .tenancy.audit import audit_cli

    audit_cli(args.adapters_dir, "adapter.publish", args.name, source=str(args.source), forced=args.force)
    print(f"Published {args.name} to {target}; a gateway watching {args.adapters_dir} serves it as {args.name!r}.")
    if replaced:
        print(
            f"It replaced the previous files of {args.name}; versions a gateway served are kept: "
            f"`lora-gateway adapters rollback {args.name}` brings the last one back."
        )
    return _await_serving(args, args.name, target, rejected_before)


def _publish_check(args: argparse.Namespace) -> Any:
    """What can be checked without a gateway: format, headers, rank, DoRA/bias, finite weights, and
    the shapes against the base (``--base``, or the base the adapter names when it is a local model)."""
    from .registry.base_model import BaseModelSpec
    from .registry.validation import check_finite, declared_base, inspect_adapter
    from .terms.layout import WEIGHTS_FILE

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
    from .registry.offline import directory_version
    from .registry.publish import publish_adapter
    from .registry.store import VersionStore

    store = VersionStore(Path(args.adapters_dir))
    current = directory_version(store, args.name)
    try:
        choice = store.rollback_target(args.name, args.version, current.path if current else None)
    except LookupError as exc:
        raise SystemExit(f"lora-gateway: {exc.args[0]}") from None
    publish_adapter(choice.path, args.name, args.adapters_dir)
    from .tenancy.audit import audit_cli

    audit_cli(args.adapters_dir, "adapter.rollback", args.name, version=choice.number)
    print(
        f"Republished {args.name} version {choice.number} (sha256 "
        f"{choice.sha256[:12]}); a running gateway serves it now."
    )
    return 0


def _cmd_adapters_history(args: argparse.Namespace) -> int:
    from .registry.history import history, table
    from .registry.offline import directory_version
    from .registry.store import VersionStore

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
    from .registry.offline import listing

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
    from .registry.store import VersionStore

    pinned = args.adapters_command == "pin"
    try:
        VersionStore(Path(args.adapters_dir)).set_pinned(args.name, args.version, pinned)
    except LookupError as exc:
        raise SystemExit(f"lora-gateway: {exc.args[0]}") from None
    from .tenancy.audit import audit_cli

    audit_cli(args.adapters_dir, f"adapter.{args.adapters_command}", args.name, version=args.version)
    what = "pinned: retention never deletes it" if pinned else "unpinned: retention may delete it"
    print(f"{args.name} version {args.version} {what}.")
    return 0


def _cmd_adapters_remove(args: argparse.Namespace) -> int:
    from .registry.publish import remove_adapter

    if not remove_adapter(args.name, args.adapters_dir):
        raise SystemExit(f"lora-gateway: no adapter {args.name!r} in {args.adapters_dir}")
    from .tenancy.audit import audit_cli

    audit_cli(args.adapters_dir, "adapter.remove", args.name)
    print(f"Removed {args.name} from {args.adapters_dir}.")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .registry.validation import AdapterIncomplete, AdapterRejected
    from .trainer import TrainConfig, TrainingError, TrainingInterrupted, train

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    values = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__}
    values["publish"] = not args.no_publish
    values["gate_min"], values["gate_max_drop"] = dict(args.gate_min or ()), dict(args.gate_max_drop or ())
    config = TrainConfig(**values)
    from .registry.served import rejections

    rejected_before = rejections(args.gateway) if args.wait and not args.no_publish else None
    try:
        result = train(config)
    except TrainingError as exc:
        print(f"lora-gateway train: {exc}", file=sys.stderr)
        return 2
    except TrainingInterrupted as exc:
        print(f"lora-gateway train: {exc}", file=sys.stderr)
        return 130
    except (AdapterRejected, AdapterIncomplete) as exc:
        print(
            f"lora-gateway train: trained, but not published: {exc} (the adapter is in {config.run_dir / 'adapter'})",
            file=sys.stderr,
        )
        return 2
    except OSError as exc:  # a base that is neither a local model nor reachable on the Hub
        print(f"lora-gateway train: --base {config.base}: {first_line(exc)}", file=sys.stderr)
        return 2
    print(
        f"adapter: {result.adapter_dir} ({result.steps} steps, final loss {result.train_loss:.4f}, "
        f"{result.tokens_per_second:.0f} tokens/s, {result.seconds:.1f}s)"
    )
    print(f"loss curve: {config.run_dir / 'training_loss.png'}")
    if result.published_to:
        from .tenancy.audit import audit_cli

        audit_cli(result.published_to.parent, "adapter.publish", config.name, trained=str(result.adapter_dir))
        serves = "once its eval gate passes" if config.eval_set else "after it is validated and loaded"
        if config.canary is not None:  # a split: the version serving before keeps the rest
            serves += (
                f", to {config.canary}% of users (a canary; `lora-gateway adapters promote {config.name}` or `abort`)"
            )
        print(f"published as model {config.name!r} in {result.published_to.parent}; a gateway serves it {serves}")
        code = _await_serving(args, config.name, result.published_to, rejected_before)
        body = {"model": config.name, "messages": [{"role": "user", "content": "Hello"}]}
        print(
            f"  curl {args.gateway}/v1/chat/completions -H 'Content-Type: application/json' "
            f"-d '{json.dumps(body, ensure_ascii=False)}'"
        )
        return code
    return 0


def _await_serving(args: argparse.Namespace, name: str, published: Path, rejected_before: float | None) -> int:
    """Say whether the gateway serves what was just written (``registry/served.py``): 1 when it
    refused it, else 0."""
    from .registry.served import wait_until_served
    from .registry.validation import file_sha256
    from .terms.layout import WEIGHTS_FILE

    if not args.wait:
        print(f"not waiting (--wait 0): {args.gateway}/v1/adapters (admin key) shows when it serves")
        return 0
    outcome = wait_until_served(
        args.gateway, name, file_sha256(published / WEIGHTS_FILE), timeout=args.wait, rejected_before=rejected_before
    )
    print(outcome.message, file=sys.stderr if outcome.served is False else sys.stdout)
    return 1 if outcome.served is False else 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .terms.layout import CONFIG_FILE
    from .trainer.export import export_merged

    if not (Path(args.adapter) / CONFIG_FILE).is_file():
        raise SystemExit(f"lora-gateway export: --adapter {args.adapter}: no adapter_config.json there")
    try:
        out = export_merged(args.base, args.adapter, args.out, dtype=args.dtype)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"lora-gateway export: {first_line(exc)}") from None
    print(f"merged model written to {out}")
    return 0


def _add_train_flags(parser: argparse.ArgumentParser) -> None:
    from .trainer import TrainConfig

    defaults = TrainConfig(base="", data=[], name="")
    add = parser.add_argument
    add("--base", required=True, help="Base model: a Hub id or a local path (the one the gateway serves).")
    add(
        "--data",
        required=True,
        action="append",
        help="Training file (JSON array or JSONL); repeat to mix several; FILE#N samples N examples of FILE.",
    )
    add("--name", required=True, help="Adapter name: the model id clients will use.")
    add(
        "--adapters-dir",
        default=os.environ.get("LORA_GATEWAY_ADAPTERS_DIR", defaults.adapters_dir),
        help="Watched directory to publish into.",
    )
    add("--no-publish", action="store_true", help="Only write the adapter under --output-dir.")
    add("--output-dir", default=None, help="Run directory [default runs/NAME].")
    add(
        "--format",
        default="auto",
        choices=["auto", "alpaca", "sharegpt", "messages", "query-response"],
        help="The --data files' format (auto: told from each file's records) [default auto].",
    )
    add("--system", default=None, help="System prompt for records that have none.")
    add("--model-name", default=None, help="Fills {{NAME}} in the data.")
    add("--model-author", default=None, help="Fills {{AUTHOR}} in the data.")
    for flag, kind in (
        ("epochs", int),
        ("lr", float),
        ("rank", int),
        ("alpha", int),
        ("dropout", float),
        ("batch_size", int),
        ("grad_accum", int),
        ("max_length", int),
        ("warmup_ratio", float),
        ("val_split", float),
        ("seed", int),
        ("max_grad_norm", float),
        ("logging_steps", int),
    ):
        add(
            "--" + flag.replace("_", "-"),
            type=kind,
            default=getattr(defaults, flag),
            help=f"[default {getattr(defaults, flag)}]",
        )
    add("--target-modules", default=defaults.target_modules, help="all-linear, or comma-separated module names.")
    add("--save-steps", type=int, default=None, help="Checkpoint every N optimizer steps.")
    add("--save-total-limit", type=int, default=None, help="Keep only the newest N checkpoints.")
    add("--max-steps", type=int, default=None, help="Stop after N steps (the schedule still spans all epochs).")
    add(
        "--resume",
        nargs="?",
        const="latest",
        default=None,
        help="Resume from CHECKPOINT, or the newest one in --output-dir.",
    )
    add(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="Where to train (auto: cuda if any) [default auto].",
    )
    add(
        "--dtype",
        default="auto",
        choices=["auto", "bfloat16", "float16", "float32"],
        help="The base's dtype while training (auto: bfloat16 on a GPU that has it, else float32) [default auto].",
    )
    add("--allow-small", action="store_true", help="Train on fewer than 10 examples.")
    add(
        "--eval-set",
        default=None,
        metavar="FILE",
        help="A test set the published adapter carries as its eval gate: the gateway serves the new version "
        "only if it passes (see --gate-min, --gate-max-drop; default: f1 at most 0.05 below the serving version).",
    )
    add(
        "--init-adapter",
        default=None,
        metavar="ADAPTER",
        help="Continue training this adapter (NAME in --adapters-dir, a kept NAME@N, or a path), "
        "keeping its rank and target modules.",
    )
    add(
        "--canary",
        type=int,
        default=None,
        metavar="PERCENT",
        help="Publish as a canary: the new version answers PERCENT of users, the serving one the rest.",
    )
    add("--gate-min", action="append", type=_threshold, metavar="METRIC=VALUE", help="e.g. exact=0.9, judge=8.")
    add(
        "--gate-max-drop",
        action="append",
        type=_threshold,
        metavar="METRIC=VALUE",
        help="Largest drop allowed against the version serving now, e.g. judge=0.3.",
    )


def _add_wait_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--gateway",
        default=f"http://127.0.0.1:{os.environ.get('LORA_GATEWAY_PORT', '8000')}",
        help="The running gateway to ask whether it serves what was published (its keys: LORA_GATEWAY_ADMIN_KEY, "
        "LORA_GATEWAY_API_KEY) [default %(default)s, or LORA_GATEWAY_PORT].",
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=600.0,
        help="Seconds to wait until it serves the new files or refuses them (0: do not wait) [default 600].",
    )


def _threshold(text: str) -> tuple[str, float]:
    from .terms.scores import METRICS

    metric, _, value = text.partition("=")
    try:
        return metric.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not METRIC=NUMBER (metrics: {', '.join(METRICS)})") from None


def build_parser(*, settings_flags: bool = True) -> argparse.ArgumentParser:
    """The whole CLI; ``settings_flags=False`` leaves out serve's and demo's flags (for other commands)."""
    parser = argparse.ArgumentParser(
        prog="lora-gateway", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"lora-gateway {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    p_serve = commands.add_parser("serve", help="Serve a base model and the adapters in --adapters-dir.")
    if settings_flags:
        _add_settings_flags(p_serve)
    p_serve.set_defaults(func=_cmd_serve)

    p_demo = commands.add_parser("demo", help="Build the offline demo model (cached) and serve it.")
    p_demo.add_argument("--demo-dir", default=".demo", help="Where the demo model is cached [default .demo].")
    p_demo.add_argument("--no-train", action="store_true", help="Serve without training the demo adapters.")
    if settings_flags:
        _add_settings_flags(p_demo, require_model=False, defaults={"feedback": True})
    p_demo.set_defaults(func=_cmd_demo)

    p_train = commands.add_parser("train", help="Fine-tune a LoRA adapter and publish it into the adapters directory.")
    _add_train_flags(p_train)
    _add_wait_flags(p_train)
    p_train.set_defaults(func=_cmd_train)

    p_export = commands.add_parser("export", help="Merge an adapter into its base and write a full model.")
    p_export.add_argument(
        "--base", required=True, help="The base model the adapter was trained on (Hub id or local path)."
    )
    p_export.add_argument(
        "--adapter", required=True, help="Adapter directory (adapter_config.json + adapter_model.safetensors)."
    )
    p_export.add_argument("--out", required=True, help="Directory to write the merged model into.")
    p_export.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "bfloat16", "float16", "float32"],
        help="dtype of the merged weights [default auto: the base's].",
    )
    p_export.set_defaults(func=_cmd_export)

    from .evaluation.cli import add_eval_parser
    from .feedback.cli import add_feedback_parser
    from .registry.cli import add_split_parsers
    from .tenancy.cli import add_tenancy_parsers

    add_eval_parser(commands)
    add_feedback_parser(commands)
    add_tenancy_parsers(commands)

    p_adapters = commands.add_parser("adapters", help="Manage the adapters directory.")
    adapter_commands = p_adapters.add_subparsers(dest="adapters_command", required=True)
    default_dir = os.environ.get("LORA_GATEWAY_ADAPTERS_DIR", "adapters")
    p_publish = adapter_commands.add_parser(
        "publish", help="Copy an adapter into the directory atomically (new version if NAME exists)."
    )
    p_publish.add_argument("source", help="Directory with adapter_config.json and adapter_model.safetensors.")
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
    _add_wait_flags(p_publish)
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(settings_flags=command in _SETTINGS_COMMANDS).parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
