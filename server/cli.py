"""lora-gateway: an OpenAI-compatible server for one base model and many hot-swappable LoRA adapters.

Serving flags are generated from Settings, so every flag has its LORA_GATEWAY_* env var and default
in exactly one place. Heavy libraries (torch, transformers, peft) are imported only by the commands
that use them, so --help and the adapters commands answer at once."""

from __future__ import annotations

import argparse
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
DEMO_DEFAULTS = ("feedback", "fine_tuning")  # on in the demo, off in serve
SECOND_BASE_NAME = "demo-small"  # demo.SECOND_BASE, named here so that --help imports no torch


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
    from .registry.sources import SourceConfigError
    from .serving import run

    if settings.engine != "remote" and missing_local_model(settings.model):
        raise SystemExit(f"lora-gateway: --model {settings.model}: no such directory")
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from sqlalchemy.exc import SQLAlchemyError

    try:
        app = create_app(settings)
    except (WeComConfigError, JudgesConfigError, SourceConfigError) as exc:
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
    from .demo import SECOND_BASE, SECOND_BASE_ADAPTERS, SECOND_BASE_SPEC, prepare_demo, train_demo_adapters

    model_dir = prepare_demo(args.demo_dir)
    second = prepare_demo(args.demo_dir, "base-small", SECOND_BASE_SPEC) if args.second_base else None
    # The demo captures conversations, so the feedback loop can be tried on it, and offers the
    # fine-tuning API (--no-feedback, --no-fine-tuning: off).
    demo_on: dict[str, Any] = {
        name: True
        for name in DEMO_DEFAULTS
        if name not in vars(args) and f"LORA_GATEWAY_{name.upper()}" not in os.environ
    }
    if second is not None:
        demo_on["extra_base"] = [*getattr(args, "extra_base", []), f"{SECOND_BASE}={second}"]
    settings = _settings_from(
        args, model=str(model_dir), served_model_name=getattr(args, "served_model_name", "demo-base"), **demo_on
    )
    if not args.no_train:
        train_demo_adapters(model_dir, settings.adapters_dir, Path(args.demo_dir) / "runs")
        if second is not None:
            train_demo_adapters(second, settings.adapters_dir, Path(args.demo_dir) / "runs", SECOND_BASE_ADAPTERS)
    also = f" and {SECOND_BASE!r}" if second is not None else ""
    print(
        f"Serving the offline demo model as {settings.base_model_id!r}{also} on http://{settings.host}:{settings.port}"
    )
    serve(settings)
    return 0


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
    p_demo.add_argument(
        "--second-base",
        action="store_true",
        help=f"Also serve a smaller second offline base ({SECOND_BASE_NAME!r}) with an adapter of its own.",
    )
    if settings_flags:
        _add_settings_flags(p_demo, require_model=False, defaults=dict.fromkeys(DEMO_DEFAULTS, True))
    p_demo.set_defaults(func=_cmd_demo)

    # Every package adds its own commands; this file only assembles them (each imports its
    # libraries when its command runs, so --help stays fast).
    from .evaluation.cli import add_eval_parser
    from .feedback.cli import add_feedback_parser
    from .finetune.cli import add_jobs_parser
    from .registry.cli import add_adapters_parser
    from .tenancy.cli import add_tenancy_parsers
    from .trainer.cli import add_trainer_parsers

    for add in (
        add_trainer_parsers,
        add_eval_parser,
        add_feedback_parser,
        add_tenancy_parsers,
        add_adapters_parser,
        add_jobs_parser,
    ):
        add(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(settings_flags=command in _SETTINGS_COMMANDS).parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
