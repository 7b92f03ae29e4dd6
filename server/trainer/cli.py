"""``lora-gateway train`` and ``lora-gateway export``: the trainer's commands. Flags come from
``TrainConfig``'s defaults; torch, transformers and peft load only when a command runs."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from ..errors import first_line
from ..registry.cli import add_wait_flags, await_serving


def add_trainer_parsers(commands: Any) -> None:
    p_train = commands.add_parser("train", help="Fine-tune a LoRA adapter and publish it into the adapters directory.")
    _add_train_flags(p_train)
    add_wait_flags(p_train)
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


def _cmd_train(args: argparse.Namespace) -> int:
    from ..registry.validation import AdapterIncomplete, AdapterRejected
    from . import TrainConfig, TrainingError, TrainingInterrupted, train

    # Ctrl-C (SIGINT) saves a checkpoint, even when whoever started us ignored or blocked it (a
    # process manager, a gateway's fine-tuning queue): a child inherits both, and would train on.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.default_int_handler)

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    values = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__}
    values["publish"] = not args.no_publish
    values["gate_min"], values["gate_max_drop"] = dict(args.gate_min or ()), dict(args.gate_max_drop or ())
    config = TrainConfig(**values)
    from ..registry.served import rejections

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
        from ..tenancy.audit import audit_cli

        audit_cli(result.published_to.parent, "adapter.publish", config.name, trained=str(result.adapter_dir))
        serves = "once its eval gate passes" if config.eval_set else "after it is validated and loaded"
        if config.canary is not None:  # a split: the version serving before keeps the rest
            serves += (
                f", to {config.canary}% of users (a canary; `lora-gateway adapters promote {config.name}` or `abort`)"
            )
        print(f"published as model {config.name!r} in {result.published_to.parent}; a gateway serves it {serves}")
        code = await_serving(args, config.name, result.published_to, rejected_before)
        body = {"model": config.name, "messages": [{"role": "user", "content": "Hello"}]}
        print(
            f"  curl {args.gateway}/v1/chat/completions -H 'Content-Type: application/json' "
            f"-d '{json.dumps(body, ensure_ascii=False)}'"
        )
        return code
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from ..terms.layout import CONFIG_FILE
    from .export import export_merged

    if not (Path(args.adapter) / CONFIG_FILE).is_file():
        raise SystemExit(f"lora-gateway export: --adapter {args.adapter}: no adapter_config.json there")
    try:
        out = export_merged(args.base, args.adapter, args.out, dtype=args.dtype)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"lora-gateway export: {first_line(exc)}") from None
    print(f"merged model written to {out}")
    return 0


def _add_train_flags(parser: argparse.ArgumentParser) -> None:
    from . import TrainConfig

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
    add(
        "--val-data",
        action="append",
        default=[],
        metavar="FILE",
        help="A validation file (its loss is logged at each epoch's end); repeat for several. Replaces --val-split.",
    )
    add(
        "--gpu-memory-fraction",
        type=float,
        default=None,
        help="Use at most this share of the GPU's memory (training beside a serving engine).",
    )
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


def _threshold(text: str) -> tuple[str, float]:
    from ..terms.scores import METRICS

    metric, _, value = text.partition("=")
    try:
        return metric.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not METRIC=NUMBER (metrics: {', '.join(METRICS)})") from None
