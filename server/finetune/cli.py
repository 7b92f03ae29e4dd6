"""``lora-gateway jobs list|show|cancel|events``: a running gateway's fine-tuning jobs, from the
command line (the same routes as the OpenAI SDK; the admin key sees every key's jobs)."""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any


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
            default=f"http://127.0.0.1:{os.environ.get('LORA_GATEWAY_PORT', '8000')}",
            help="The gateway (its key: LORA_GATEWAY_ADMIN_KEY, else LORA_GATEWAY_API_KEY) [default %(default)s].",
        )
        command.add_argument("--json", action="store_true", help="Print JSON.")
        command.set_defaults(func=run_jobs)


def run_jobs(args: argparse.Namespace) -> int:
    import httpx

    key = os.environ.get("LORA_GATEWAY_ADMIN_KEY") or (os.environ.get("LORA_GATEWAY_API_KEY") or "").split(",")[0]
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    base = f"{args.gateway.rstrip('/')}/v1/fine_tuning/jobs"
    with httpx.Client(headers=headers, timeout=30) as client:

        def call(method: str, url: str) -> Any:
            try:
                response = client.request(method, url)
            except httpx.HTTPError as exc:
                raise SystemExit(f"lora-gateway: no gateway answered at {args.gateway}: {exc}") from None
            if response.status_code != 200:
                try:
                    message = response.json()["error"]["message"]
                except (ValueError, KeyError, TypeError):
                    message = response.text[:200]
                raise SystemExit(f"lora-gateway: {response.status_code}: {message}")
            return response.json()

        if args.jobs_command == "list":
            data = call("GET", f"{base}?limit=100")["data"]
            if args.json:
                print(json.dumps(data, indent=2))
            for job in [] if args.json else data:
                print(f"{job['id']}  {job['status']:<16} {job['model']:<24} {job['fine_tuned_model'] or '-'}")
            return 0
        if args.jobs_command in ("show", "cancel"):
            job = call(
                "GET" if args.jobs_command == "show" else "POST",
                f"{base}/{args.job_id}" + ("/cancel" if args.jobs_command == "cancel" else ""),
            )
            print(json.dumps(job, indent=2) if args.json else _describe(job))
            return 0
        return _events(args, call, base)


def _describe(job: dict[str, Any]) -> str:
    lines = [
        f"{job['id']}: {job['status']}",
        f"  model: {job['model']} -> {job['fine_tuned_model'] or '(when it succeeds)'}",
    ]
    lines.append(f"  training file: {job['training_file']}; hyperparameters: {json.dumps(job['hyperparameters'])}")
    if job.get("error"):
        lines.append(f"  error: {job['error'].get('message')}")
    return "\n".join(lines)


def _events(args: argparse.Namespace, call: Any, base: str) -> int:
    seen: set[str] = set()
    while True:
        events = list(reversed(call("GET", f"{base}/{args.job_id}/events?limit=100")["data"]))
        for event in events:
            if event["id"] not in seen:
                seen.add(event["id"])
                print(
                    json.dumps(event)
                    if args.json
                    else f"{time.strftime('%H:%M:%S', time.localtime(event['created_at']))} {event['message']}"
                )
        if not args.follow or call("GET", f"{base}/{args.job_id}")["status"] in ("succeeded", "failed", "cancelled"):
            return 0
        time.sleep(1)
