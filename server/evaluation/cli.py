"""``lora-gateway eval``: ask the models a test set, score the answers, write the comparison."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

# The evaluation modules (httpx, the report's matplotlib) load when a command runs, not for --help.
if TYPE_CHECKING:
    from .runner import AnswerCache, Sampling, Target


def add_eval_parser(commands: Any) -> None:
    p = commands.add_parser("eval", help="Compare models on a test set: scores, latency, speed; writes a report.")
    add = p.add_argument
    add(
        "--data",
        action="append",
        default=[],
        metavar="FILE",
        help="Test set: any format `train` reads, or questions (required, except with --import-ratings).",
    )
    add("--model", action="append", default=[], metavar="NAME", help="A model of the gateway at --url; repeat.")
    add("--url", default=os.environ.get("LORA_GATEWAY_URL", "http://127.0.0.1:8000"), help="The gateway.")
    add("--api-key", default=os.environ.get("LORA_GATEWAY_API_KEY"), help="The gateway's inference key, if any.")
    add("--admin-key", default=os.environ.get("LORA_GATEWAY_ADMIN_KEY"), help="Lets eval read adapter versions.")
    add("--endpoint", action="append", default=[], metavar="URL", help="Another OpenAI-compatible endpoint (.../v1).")
    add("--endpoint-model", action="append", default=[], metavar="NAME", help="The model to ask at each --endpoint.")
    add("--endpoint-key", default=os.environ.get("EVAL_ENDPOINT_API_KEY"), help="API key for the --endpoint(s).")
    add("--name", default=None, help="Run name: the report goes to --out/NAME [default: eval-<time>].")
    add("--out", default="runs/eval", help="Where reports go [default runs/eval].")
    add("--temperature", type=float, default=0.0, help="Sampling temperature of every answer [default 0: greedy].")
    add("--max-tokens", type=int, default=512, help="Most tokens per answer [default 512].")
    add("--concurrency", type=int, default=4, help="Questions asked at once, over all models [default 4].")
    add("--no-cache", action="store_true", help="Ask again even what the cache holds.")
    add("--judge-url", default=None, help="An OpenAI-compatible endpoint (.../v1) whose model scores the answers.")
    add("--judge-model", default=None, help="The judge model (the gateway's own base works).")
    add("--judge-key", default=os.environ.get("EVAL_JUDGE_API_KEY"), help="API key for the judge.")
    add(
        "--pairwise",
        action="store_true",
        help="Also ask the judge which of two models' answers is better, each pair twice (positions swapped).",
    )
    add("--rubric", default=None, help="Rubric file (JSON) [default: accuracy 3, politeness 2, completeness 2, ...].")
    add("--retention", action="store_true", help="Also ask a general set of the base and every model: what was lost.")
    add("--retention-set", default=None, metavar="FILE", help="The general set [default examples/retention.jsonl].")
    add("--base", default=None, help="Start a gateway for this run on this base (Hub id or path) instead of --url.")
    add(
        "--adapters-dir",
        default="adapters",
        help="Where named --model adapters are: served with --base, and their training records read for the "
        "leakage check [default adapters].",
    )
    add("--device", default="auto", choices=["auto", "cpu", "cuda"], help="With --base: the engine's device.")
    add("--rating-sheet", action="store_true", help="Also write a blind rating sheet (CSV) for human raters.")
    add(
        "--import-ratings",
        action="append",
        default=[],
        metavar="FILE",
        help="Raters' filled sheets (CSV) for run --name, the playground's ratings file (.jsonl), "
        "or the feedback database's URL (a gateway run with --feedback keeps the playground's ratings there).",
    )
    p.set_defaults(func=run_eval)


_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def run_name(name: str | None) -> str | None:
    """``--name`` as one directory under ``--out``: ``../..`` or a path would write elsewhere."""
    if name is not None and (not _RUN_NAME.fullmatch(name) or ".." in name):
        raise SystemExit(f"eval: --name {name!r}: a run name is letters, digits, '.', '_' and '-' (one directory)")
    return name


def base_url(args: argparse.Namespace) -> str:
    return args.url.rstrip("/") + "/v1"


def _targets(args: argparse.Namespace, versions: dict[str, str] | None = None) -> list[Target]:
    from .runner import Target, gateway_version

    base = base_url(args)
    known = versions or {}
    targets = [
        Target(m, base, m, args.api_key, known.get(m) or gateway_version(base, m, args.admin_key)) for m in args.model
    ]
    if len(args.endpoint) != len(args.endpoint_model):
        raise SystemExit("eval: give one --endpoint-model for each --endpoint")
    for url, model in zip(args.endpoint, args.endpoint_model, strict=True):
        host = url.split("//", 1)[-1].split("/", 1)[0]
        targets.append(Target(f"{model}@{host}", url.rstrip("/"), model, args.endpoint_key, f"{url}#{model}"))
    if not targets:
        raise SystemExit("eval: name at least one --model (or an --endpoint with --endpoint-model)")
    return targets


def run_eval(args: argparse.Namespace) -> int:
    if args.import_ratings:
        return _import_ratings(args)
    if not args.data:
        raise SystemExit("eval: --data FILE is required (the test set)")
    if args.base:
        return _run_on_local_gateway(args)
    return _run(args)


def _run_on_local_gateway(args: argparse.Namespace) -> int:
    """``--base``: serve the base and the named adapters or checkpoint directories for this run only."""
    from ..registry.validation import file_sha256
    from ..terms.layout import WEIGHTS_FILE
    from .local_gateway import local_gateway, served_name

    adapters: dict[str, Path] = {}
    labels: list[str] = []
    for model in args.model:
        path = Path(model)
        if model == "base":
            labels.append("base")
            continue
        if not path.is_dir():
            path = Path(args.adapters_dir) / model
        if not (path / WEIGHTS_FILE).is_file():
            raise SystemExit(f"eval: --model {model}: not an adapter or checkpoint directory ({path})")
        name = served_name(path) if Path(model).is_dir() else model
        adapters[name] = path
        labels.append(name)
    versions = {name: file_sha256(path / WEIGHTS_FILE) for name, path in adapters.items()}
    versions["base"] = f"{Path(args.base).resolve() if Path(args.base).exists() else args.base}#base"
    with local_gateway(args.base, adapters, device=args.device) as url:
        args.url, args.model = url, labels
        return _run(args, versions)


def _run(args: argparse.Namespace, versions: dict[str, str] | None = None) -> int:
    from tqdm import tqdm

    from ..datasets.testset import TestSetError, load_test_set
    from .compare import answer_id
    from .judge import judge_all, load_rubric
    from .leakage import check as check_leakage
    from .ratings import export_sheet
    from .report import write_report
    from .runner import AnswerCache, Sampling, ask_all, engine_peak_memory

    try:
        items = load_test_set(args.data)
    except TestSetError as exc:
        print(f"eval: the test set has problems:\n{exc}", file=sys.stderr)
        return 2
    targets = _targets(args, versions)
    name = run_name(args.name) or time.strftime("eval-%Y%m%d-%H%M%S")
    out = Path(args.out) / name
    cache = AnswerCache(None if args.no_cache else Path(args.out) / ".cache" / "answers.jsonl")
    sampling = Sampling(temperature=args.temperature, max_tokens=args.max_tokens)
    started = time.perf_counter()
    with tqdm(total=len(targets) * len(items), desc="asking", unit="answer", file=sys.stderr) as bar:
        answers = asyncio.run(
            ask_all(targets, items, sampling, cache, concurrency=args.concurrency, progress=bar.update)
        )
    verdicts = None
    if args.judge_model:
        rubric = load_rubric(args.rubric)
        by_item = {item.key: item for item in items}
        tasks = [(answer_id(a), by_item[a.item], a.text) for a in answers if a.error is None]
        judge_url = (args.judge_url or base_url(args)).rstrip("/")
        verdicts = asyncio.run(
            judge_all(tasks, rubric, url=judge_url, model=args.judge_model, api_key=args.judge_key or args.api_key)
        )
    pairwise = None
    if args.pairwise:
        if not args.judge_model:
            raise SystemExit("eval: --pairwise needs a judge (--judge-model, and --judge-url for another endpoint)")
        pairwise = _pairwise(args, targets, items, answers)
    kept = None
    if args.retention or args.retention_set:
        kept = _retention(args, targets, sampling, cache)
        if kept is None:
            return 2
    peaks = {url: engine_peak_memory(url) for url in {t.base_url for t in targets}}  # once per engine
    memory = {t.label: peaks[t.base_url] for t in targets}
    report = write_report(
        out,
        name,
        targets,
        items,
        answers,
        sampling,
        time.perf_counter() - started,
        verdicts,
        retention=kept,
        memory=memory,
        pairwise=pairwise,
        leakage=check_leakage(Path(args.adapters_dir), [t.model for t in targets], items) or None,
    )
    if args.rating_sheet:
        sheet = export_sheet(out, answers, items, load_rubric(args.rubric))
        print(f"rating sheet: {sheet} (names hidden; import the raters' copies with --import-ratings)")
    print((out / "report.md").read_text(encoding="utf-8"))
    print(f"report: {out}/report.md, report.html, report.json, answers.jsonl")
    return _verdict(report)


def _pairwise(args: argparse.Namespace, targets: list[Any], items: list[Any], answers: list[Any]) -> dict[str, Any]:
    from .judge import http_judge, judge_client
    from .pairwise import judge_pairs, summarize

    labels = [t.label for t in targets]
    judge_url = (args.judge_url or base_url(args)).rstrip("/")

    async def run() -> Any:
        async with judge_client() as client:
            ask = http_judge(client, judge_url, args.judge_model, args.judge_key or args.api_key)
            return await judge_pairs(ask, labels, items, answers, concurrency=args.concurrency)

    return summarize(labels, asyncio.run(run()))


def _verdict(report: dict[str, Any]) -> int:
    """Say what came from the cache and why questions failed; a model that answered nothing fails
    the run (exit 1), whatever the others did."""
    for model in report["models"]:
        if model["cached"]:
            print(f"{model['model']}: {model['cached']} of {model['questions']} answers from the cache (same version)")
        if model["errors"]:
            print(
                f"eval: {model['model']}: {model['errors']} of {model['questions']} questions failed: "
                f"{model['error_reason']}",
                file=sys.stderr,
            )
    silent = [m["model"] for m in report["models"] if m["questions"] and m["errors"] == m["questions"]]
    if silent:
        print(f"eval: failed: {', '.join(silent)} answered no question", file=sys.stderr)
    return 1 if silent else 0


def _import_ratings(args: argparse.Namespace) -> int:
    from .judge import load_rubric
    from .ratings import RatingError, import_playground, import_sheets, merge_ratings
    from .report import write_pages

    if not args.name:
        raise SystemExit("eval: --import-ratings needs --name: the run whose sheet was rated")
    out = Path(args.out) / str(run_name(args.name))
    rubric = load_rubric(args.rubric)
    playground = [p for p in args.import_ratings if "://" in p or p.endswith(".jsonl")]
    try:
        sheets = [Path(p) for p in args.import_ratings if p not in playground]
        human = merge_ratings(
            import_sheets(out, sheets, rubric) if sheets else {},
            import_playground(list(playground), rubric),
        )
        report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    except (RatingError, OSError, ValueError) as exc:
        print(f"eval: {exc}", file=sys.stderr)
        return 2
    (out / "human_scores.json").write_text(json.dumps(human, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    for model in report["models"]:
        model["human_total"] = human.get(model["model"], {}).get("human_total")
    if sheets:
        report["agreement"] = _agreement(out, sheets, rubric)
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    write_pages(out, report)
    print((out / "report.md").read_text(encoding="utf-8"))
    return 0


def _agreement(out: Path, sheets: list[Path], rubric: Any) -> dict[str, Any]:
    """Judge–human and inter-rater agreement over the answers the sheets rated."""
    from .agreement import agreement
    from .ratings import rating_key, sheet_totals

    judge: dict[tuple[str, str], float] = {}
    answers = out / "answers.jsonl"
    for line in answers.read_text(encoding="utf-8").splitlines() if answers.is_file() else []:
        record = json.loads(line)
        verdict = record.get("judge")
        if verdict and verdict.get("error") is None:
            judge[(record["model"], record["item"])] = float(verdict["total"])
    return agreement(sheet_totals(out, sheets, rubric), rating_key(out), judge, rubric.total)


def _retention(args: argparse.Namespace, targets: list[Target], sampling: Sampling, cache: AnswerCache) -> Any:
    from ..datasets.testset import TestSetError, load_test_set
    from ..demo import examples_dir
    from ..terms.address import split_address
    from .retention import retention, served_models
    from .runner import Target, gateway_version

    path = args.retention_set or str(examples_dir() / "retention.jsonl")
    try:
        items = load_test_set([path])
    except TestSetError as exc:
        print(f"eval: the retention set has problems:\n{exc}", file=sys.stderr)
        return None
    served = served_models(base_url(args), args.api_key)
    names = [m for m, parent in served.items() if parent is None]
    if not names:
        print(f"eval: --retention needs the gateway's base model, and {args.url} did not list one", file=sys.stderr)
        return None
    base_of = {t.label: parent for t in targets if (parent := served.get(split_address(t.model)[0]))}
    wanted = [n for n in names if n == names[0] or n in base_of.values()]  # the bases the models are on
    bases = [
        Target(n, base_url(args), n, args.api_key, gateway_version(base_url(args), n, args.admin_key)) for n in wanted
    ]
    return asyncio.run(retention(targets, bases, items, sampling, cache, args.concurrency, base_of))
