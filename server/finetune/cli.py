"""``lora-gateway jobs list|show|cancel|events``: a running gateway's fine-tuning jobs, from the
command line (the same routes as the OpenAI SDK; the admin key sees every key's jobs)."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from ..registry.served import ask, cli_keys, default_gateway


def add_jobs_parser(commands: Any) -> None:
    p = commands.add_parser(
        "jobs", help="Fine-tuning jobs on a running gateway (--fine-tuning): list, show, cancel, events."
    )
    sub = p.add_subparsers(dest="jobs_command", required=True)
    for name, text in (
        ("list", "Jobs, newest first."),
        ("show", "One job."),
        ("cancel", "Cancel a queued or running job."),
        ("events", "A job's events, oldest first (--follow: until it finishes)."),
    ):
        command = sub.add_parser(name, help=text)
        if name != "list":
            command.add_argument("job_id")
        if name == "events":
            command.add_argument("--follow", action="store_true", help="Keep printing new events until the job ends.")
        command.add_argument(
            "--gateway",
            default=default_gateway(),
            help="The gateway (its key: LORA_GATEWAY_ADMIN_KEY, else LORA_GATEWAY_API_KEY) [default %(default)s].",
        )
        command.add_argument("--json", action="store_true", help="Print JSON.")
        command.set_defaults(func=run_jobs)


def run_jobs(args: argparse.Namespace) -> int:
    admin_key, api_key = cli_keys()
    base = "/v1/fine_tuning/jobs"

    def call(method: str, path: str) -> Any:
        return ask(args.gateway, method, f"{base}{path}", admin_key or api_key)

    if args.jobs_command == "list":
        data = call("GET", "?limit=100")["data"]
        if args.json:
            print(json.dumps(data, indent=2))
        for job in [] if args.json else data:
            print(f"{job['id']}  {job['status']:<16} {job['model']:<24} {job['fine_tuned_model'] or '-'}")
        return 0
    if args.jobs_command in ("show", "cancel"):
        cancel = args.jobs_command == "cancel"
        job = call("POST" if cancel else "GET", f"/{args.job_id}" + ("/cancel" if cancel else ""))
        print(json.dumps(job, indent=2) if args.json else _describe(job))
        return 0
    return _events(args, call)


def _describe(job: dict[str, Any]) -> str:
    lines = [
        f"{job['id']}: {job['status']}",
        f"  model: {job['model']} -> {job['fine_tuned_model'] or '(when it succeeds)'}",
    ]
    lines.append(f"  training file: {job['training_file']}; hyperparameters: {json.dumps(job['hyperparameters'])}")
    if job.get("error"):
        lines.append(f"  error: {job['error'].get('message')}")
    return "\n".join(lines)


def _events(args: argparse.Namespace, call: Any) -> int:
    seen: set[str] = set()
    while True:
        # The status first: a finished job has written its last event (finetune/service.py), so the
        # page read after it holds that event.
        finished = call("GET", f"/{args.job_id}")["status"] in ("succeeded", "failed", "cancelled")
        events = list(reversed(call("GET", f"/{args.job_id}/events?limit=100")["data"]))
        for event in events:
            if event["id"] not in seen:
                seen.add(event["id"])
                print(
                    json.dumps(event)
                    if args.json
                    else f"{time.strftime('%H:%M:%S', time.localtime(event['created_at']))} {event['message']}"
                )
        if not args.follow or finished:
            return 0
        time.sleep(1)
