"""LoRA fine-tuning, top to bottom: data -> tokens -> peft model -> loop -> adapter -> published.

Read it like nanoGPT's train.py: one function (``train``), in the order things happen, with the
helpers it needs below it. Defaults are LLaMA-Factory's for LoRA on a ~7B model (rank 8, alpha 16,
lr 1e-4, 3 epochs, cosine with 10 % warmup, batch 1 x 8 accumulation, 2048 tokens).
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..datasets.conversations import load_files
from ..devices import resolve_device, resolve_dtype
from ..registry.base_model import BaseModelSpec, canonical_base_name
from ..registry.dry_run import check_adapter
from ..registry.gate_spec import plan_gate, write_gate
from ..terms.layout import CONFIG_FILE, SPLIT_FILE, WEIGHTS_FILE
from .artifacts import RunLog, checkpoint_dirs, nearest_vllm_rank, write_metadata
from .config import TrainConfig, TrainingError, TrainingInterrupted, TrainResult
from .init_adapter import resolve_init_adapter
from .template import IGNORE, Example, fit

logger = logging.getLogger(__name__)


def train(config: TrainConfig) -> TrainResult:
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_cosine_schedule_with_warmup

    started = time.perf_counter()
    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    random.seed(config.seed)
    torch.manual_seed(config.seed)

    # 1. Data: every record validated before anything is loaded onto a device.
    placeholders = {k: v for k, v in (("NAME", config.model_name), ("AUTHOR", config.model_author)) if v}
    dataset = load_files(
        config.data, format=config.format, system=config.system, placeholders=placeholders, seed=config.seed
    )
    if dataset.errors:
        raise TrainingError("bad training data:\n" + "\n".join(dataset.errors))
    if len(dataset.conversations) < 10 and not config.allow_small:
        raise TrainingError(
            f"only {len(dataset.conversations)} valid examples; at least 10 are needed "
            "(as OpenAI's fine-tuning requires). Pass --allow-small to train anyway."
        )

    init = resolve_init_adapter(config.init_adapter, config.adapters_dir) if config.init_adapter else None
    if config.canary is not None and not 0 < config.canary < 100:
        raise TrainingError(f"--canary {config.canary}: a percentage between 1 and 99")
    gate = None
    if config.eval_set:  # checked now, not after an hour of training
        try:
            gate = plan_gate(config.eval_set, config.gate_min, config.gate_max_drop)
        except ValueError as exc:
            raise TrainingError(str(exc)) from None

    # 2. Tokens, rendered with the base's chat template exactly as the server renders prompts.
    tokenizer = AutoTokenizer.from_pretrained(config.base)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    examples: list[Example] = []
    truncated = dropped = 0
    for conversation in dataset.conversations:
        example, was_cut = fit(tokenizer, conversation, config.max_length)
        if example is None:
            dropped += 1
            logger.warning(
                "%s: longer than --max-length %d even at its first answer; dropped",
                conversation.source,
                config.max_length,
            )
            continue
        if was_cut:
            truncated += 1
            logger.warning(
                "%s: longer than --max-length %d; cut at a turn boundary", conversation.source, config.max_length
            )
        examples.append(example)
    if not examples:
        raise TrainingError(f"no example fits in --max-length {config.max_length}")
    if config.val_data:  # a validation file of its own: every training example trains
        train_set, val_set = examples, _validation_examples(config, tokenizer, placeholders)
    else:
        train_set, val_set = _split(examples, config.val_split, config.seed)
    counts = {
        "records": len(dataset.conversations),
        "truncated": truncated,
        "dropped": dropped,
        "train": len(train_set),
        "validation": len(val_set),
    }
    print(
        f"data: {counts['records']} examples ({truncated} cut at a turn boundary, {dropped} dropped as too long); "
        f"{len(train_set)} train, {len(val_set)} validation"
    )

    # 3. Model: the base in the serving dtype, with a plain LoRA that vLLM can serve.
    device = resolve_device(config.device)
    if config.gpu_memory_fraction is not None and device.type == "cuda":  # beside a serving engine
        torch.cuda.set_per_process_memory_fraction(config.gpu_memory_fraction, device)
    dtype = resolve_dtype(config.dtype, device)
    model = AutoModelForCausalLM.from_pretrained(config.base, dtype=dtype).to(device)  # type: ignore[arg-type]
    if init is not None:  # the existing adapter's weights, rank and targets, trainable again
        model = PeftModel.from_pretrained(model, str(init.path), is_trainable=True)
        targets = init.target_modules
        print(f"continuing from {init.describe()}")
    else:
        targets = _target_modules(model, config.target_modules)
        nearest = nearest_vllm_rank(config.rank)
        if nearest != config.rank:
            logger.warning(
                "rank %d is not in vLLM's allowed max_lora_rank set; the nearest allowed value is %d",
                config.rank,
                nearest,
            )
        lora = LoraConfig(
            r=config.rank,
            lora_alpha=config.alpha,
            lora_dropout=config.dropout,
            target_modules=targets,
            bias="none",
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    model.config.use_cache = False

    # 4. Optimiser and schedule, in optimizer steps (one step = grad_accum micro-batches).
    micro_per_epoch = math.ceil(len(train_set) / config.batch_size)
    steps_per_epoch = math.ceil(micro_per_epoch / config.grad_accum)
    total_steps = steps_per_epoch * config.epochs
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(config.warmup_ratio * total_steps), total_steps)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None

    step = 0
    if config.resume:
        step = _resume(config, run_dir, model, optimizer, scheduler)
        print(f"resuming from step {step}/{total_steps}")
    log = RunLog(run_dir, resume_from=step)

    # 5. The loop.
    last_step = min(total_steps, config.max_steps or total_steps)
    progress = _progress_bar(config.progress, total_steps, step)
    tokens_seen, loop_started = 0, time.perf_counter()
    train_loss: float | None = None
    eval_loss: float | None = None
    model.train()
    try:
        while step < last_step:
            epoch = step // steps_per_epoch
            order = torch.randperm(
                len(train_set), generator=torch.Generator().manual_seed(config.seed + epoch)
            ).tolist()
            first = (step % steps_per_epoch) * config.grad_accum
            window = [
                order[i * config.batch_size : (i + 1) * config.batch_size]
                for i in range(first, min(first + config.grad_accum, micro_per_epoch))
            ]
            batches = [_collate([train_set[i] for i in ids], tokenizer.pad_token_id, device) for ids in window]
            window_tokens = sum(int((b["labels"] != IGNORE).sum()) for b in batches)
            loss_sum = 0.0
            for batch in batches:
                loss = _token_loss_sum(model, batch) / window_tokens  # mean over the window's answer tokens
                (scaler.scale(loss) if scaler else loss).backward()
                loss_sum += float(loss.detach())
                tokens_seen += int(batch["attention_mask"].sum())
            if scaler:
                scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            train_loss = loss_sum

            end_of_epoch = step % steps_per_epoch == 0 or step == last_step
            if val_set and end_of_epoch:
                eval_loss = _evaluate(model, val_set, tokenizer.pad_token_id, device, config.batch_size)
            if step % config.logging_steps == 0 or end_of_epoch:
                elapsed = time.perf_counter() - loop_started
                log.write(
                    step=step,
                    total_steps=total_steps,
                    loss=train_loss,
                    eval_loss=eval_loss if end_of_epoch else None,
                    lr=scheduler.get_last_lr()[0],
                    epoch=step / steps_per_epoch,
                    tokens_per_second=tokens_seen / max(elapsed, 1e-9),
                )
            progress.update(1)
            progress.set_postfix(
                loss=f"{train_loss:.4f}",
                lr=f"{scheduler.get_last_lr()[0]:.2e}",
                tok_s=f"{tokens_seen / max(time.perf_counter() - loop_started, 1e-9):.0f}",
            )
            if config.save_steps and step % config.save_steps == 0 and step < total_steps:
                _save_checkpoint(run_dir, step, model, optimizer, scheduler, config.save_total_limit)
    except KeyboardInterrupt:
        progress.close()
        checkpoint = _save_checkpoint(run_dir, step, model, optimizer, scheduler, config.save_total_limit)
        log.plot()
        raise TrainingInterrupted(checkpoint) from None
    progress.close()

    # 6. The adapter, its metadata and loss curve, then publication into the watched directory.
    seconds = time.perf_counter() - started
    adapter_dir = run_dir / "adapter"
    shutil.rmtree(adapter_dir, ignore_errors=True)
    model.save_pretrained(str(adapter_dir), safe_serialization=True)
    base = BaseModelSpec.from_pretrained(config.base)
    _record_base(adapter_dir, config.base)
    trained_tokens = sum(e.trained_tokens for e in train_set) * config.epochs
    result = TrainResult(
        adapter_dir,
        None,
        step,
        train_loss,
        eval_loss,
        trained_tokens,
        seconds,
        tokens_seen / max(time.perf_counter() - loop_started, 1e-9),
        counts,
    )
    write_metadata(adapter_dir, config, dataset.formats, counts, result, targets, base.fingerprint, init)
    if init is not None:
        init.carry_profile(adapter_dir)
    if config.canary is not None:  # the gateway splits users between this version and the serving one
        (adapter_dir / SPLIT_FILE).write_text(json.dumps({"canary": config.canary}))
    if gate is not None and config.eval_set:
        write_gate(adapter_dir, config.eval_set, gate)  # the gateway runs it before serving this version
    log.plot()
    if config.publish:
        result.published_to = _publish(config, adapter_dir, base)
    return result


# ----------------------------------------------------------------------------------- helpers


def _validation_examples(config: TrainConfig, tokenizer: Any, placeholders: dict[str, str]) -> list[Example]:
    """The ``--val-data`` files' examples, held to the training data's rules."""
    dataset = load_files(
        config.val_data, format=config.format, system=config.system, placeholders=placeholders, seed=config.seed
    )
    if dataset.errors:
        raise TrainingError("bad validation data:\n" + "\n".join(dataset.errors))
    fitted = [fit(tokenizer, conversation, config.max_length)[0] for conversation in dataset.conversations]
    return [example for example in fitted if example is not None]


def _split(examples: list[Example], val_split: float, seed: int) -> tuple[list[Example], list[Example]]:
    if val_split <= 0:
        return examples, []
    shuffled = examples[:]
    random.Random(seed).shuffle(shuffled)
    n_val = max(1, round(len(shuffled) * val_split))
    if n_val >= len(shuffled):
        raise TrainingError(f"--val-split {val_split} leaves no training examples")
    return shuffled[n_val:], shuffled[:n_val]


def _target_modules(model: Any, setting: str) -> list[str]:
    """``all-linear`` means every linear layer but the output head, spelled out by leaf name so
    the saved config is explicit (vLLM matches module names)."""
    if setting != "all-linear":
        return [name.strip() for name in setting.split(",") if name.strip()]
    output = model.get_output_embeddings()
    leaves = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module is not output
    }
    return sorted(leaves)


def _collate(examples: list[Example], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    width = max(len(e.input_ids) for e in examples)
    ids = [e.input_ids + [pad_id] * (width - len(e.input_ids)) for e in examples]
    labels = [e.labels + [IGNORE] * (width - len(e.labels)) for e in examples]
    mask = [[1] * len(e.input_ids) + [0] * (width - len(e.input_ids)) for e in examples]
    return {
        "input_ids": torch.tensor(ids, device=device),
        "labels": torch.tensor(labels, device=device),
        "attention_mask": torch.tensor(mask, device=device),
    }


def _token_loss_sum(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed cross-entropy over answer tokens (the caller divides by the window's token count)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    shifted = logits[:, :-1, :].float()
    targets = batch["labels"][:, 1:]
    return torch.nn.functional.cross_entropy(
        shifted.reshape(-1, shifted.shape[-1]), targets.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )


@torch.no_grad()
def _evaluate(model: Any, examples: list[Example], pad_id: int, device: torch.device, batch_size: int) -> float:
    model.eval()
    total, tokens = 0.0, 0
    for i in range(0, len(examples), batch_size):
        batch = _collate(examples[i : i + batch_size], pad_id, device)
        total += float(_token_loss_sum(model, batch))
        tokens += int((batch["labels"][:, 1:] != IGNORE).sum())
    model.train()
    return total / max(tokens, 1)


def _save_checkpoint(run_dir: Path, step: int, model: Any, optimizer: Any, scheduler: Any, limit: int | None) -> Path:
    path = run_dir / f"checkpoint-{step}"
    shutil.rmtree(path, ignore_errors=True)
    model.save_pretrained(path, safe_serialization=True)
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
        path / "trainer_state.pt",
    )
    (path / "trainer_state.json").write_text(json.dumps({"step": step}))
    if limit:
        for old in checkpoint_dirs(run_dir)[:-limit]:
            shutil.rmtree(old, ignore_errors=True)
    return path


def _resume(config: TrainConfig, run_dir: Path, model: Any, optimizer: Any, scheduler: Any) -> int:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    if config.resume == "latest":
        found = checkpoint_dirs(run_dir)
        if not found:
            raise TrainingError(f"--resume: no checkpoint in {run_dir}")
        path = found[-1]
    else:
        path = Path(str(config.resume))
    if not (path / "trainer_state.json").is_file():
        raise TrainingError(f"--resume: {path} is not a checkpoint of this trainer")
    set_peft_model_state_dict(model, load_file(path / WEIGHTS_FILE))
    # Our own file, but still loaded without unpickling arbitrary objects.
    state = torch.load(path / "trainer_state.pt", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    if state["cuda_rng"]:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return int(json.loads((path / "trainer_state.json").read_text())["step"])


def _progress_bar(enabled: bool, total: int, initial: int) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", disable=not enabled, dynamic_ncols=True)


def _record_base(adapter_dir: Path, base: str) -> None:
    """Record the base as what it is (a local model's absolute path), not as typed, so the adapter
    is accepted wherever the gateway runs from."""
    path = adapter_dir / CONFIG_FILE
    adapter_config = json.loads(path.read_text())
    adapter_config["base_model_name_or_path"] = canonical_base_name(base)
    path.write_text(json.dumps(adapter_config, indent=2))


def _publish(config: TrainConfig, adapter_dir: Path, base: BaseModelSpec) -> Path:
    """Validate against the base exactly as the gateway will, then publish atomically."""
    from ..registry.publish import publish_adapter

    replaced = (Path(config.adapters_dir) / config.name).exists()
    target = publish_adapter(
        adapter_dir, config.name, config.adapters_dir, validate=lambda staged: check_adapter(staged, base)
    )
    if replaced:
        print(
            f"replaced the previous files of {config.name!r} in "
            f"{config.adapters_dir}; a gateway that served them keeps "
            f"them as a version: `lora-gateway adapters rollback {config.name}` brings them back",
            file=sys.stderr,
        )
    return target
