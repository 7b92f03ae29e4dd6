"""After ``train`` or ``adapters publish`` wrote files: does a running gateway serve them yet?

Writing the files is not serving them: the gateway's watcher settles, validates, loads and proves
a version (and runs its eval gate) first, and may refuse it. So the CLI asks the gateway, when one
answers, until it serves the new weights or refuses them, and only then says which:

- served: the model card (``GET /v1/models/NAME``, an inference key or none) names the version
  that answers the name and its weights' sha256; nothing is generated, so nothing is captured;
- refused: with the admin key, ``GET /v1/adapters`` says so and why; without it, a rise in
  ``lora_gateway_adapters_rejected_total`` on ``/metrics`` while the old weights keep answering.

A gateway that does not answer is not waited for: the message says what will happen instead.
Keys come from the environment the gateway itself reads (``LORA_GATEWAY_ADMIN_KEY``, the first of
``LORA_GATEWAY_API_KEY``), so nothing secret goes on a command line.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..terms.address import ModelAddress

_POLL_S = 1.0


def default_gateway() -> str:
    """Where the CLI looks for a running gateway: ``127.0.0.1:$LORA_GATEWAY_PORT`` (8000)."""
    return f"http://127.0.0.1:{os.environ.get('LORA_GATEWAY_PORT', '8000')}"


def cli_keys() -> tuple[str | None, str | None]:
    """(admin key, inference key) from the environment the gateway itself reads."""
    admin_key = os.environ.get("LORA_GATEWAY_ADMIN_KEY") or None
    api_key = (os.environ.get("LORA_GATEWAY_API_KEY") or "").split(",")[0].strip() or None
    return admin_key, api_key


def ask(gateway: str, method: str, path: str, key: str | None, timeout: float = 30) -> Any:
    """One request of a command to a running gateway: its JSON, or ``SystemExit`` with one line
    saying why not (no gateway there, or its own words for a refusal)."""
    import httpx

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        response = httpx.request(method, f"{gateway.rstrip('/')}{path}", headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        raise SystemExit(f"lora-gateway: no gateway answered at {gateway}: {exc}") from None
    if response.status_code != 200:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:200]
        raise SystemExit(f"lora-gateway: {gateway} answered {response.status_code}: {message}")
    return response.json()


@dataclass(frozen=True)
class Outcome:
    served: bool | None  # None: no gateway answered, or none decided in time
    message: str


def listening(url: str) -> bool:
    """Whether anything accepts connections at ``url``: a socket, not an HTTP client, so a command
    run with no gateway about pays microseconds, not httpx's import."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=2):
            return True
    except OSError:
        return False


def rejections(url: str) -> float | None:
    """The gateway's count of refused adapter files (None when it does not answer)."""
    if not listening(url):
        return None
    import httpx

    try:
        text = httpx.get(f"{url}/metrics", timeout=5).text
    except httpx.HTTPError:
        return None
    total = 0.0
    for line in text.splitlines():
        if line.startswith("lora_gateway_adapters_rejected_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_until_served(
    url: str, name: str, sha256: str, *, timeout: float, rejected_before: float | None = None
) -> Outcome:
    """Poll the gateway at ``url`` until it serves ``name`` with weights ``sha256`` or refuses them."""
    admin_key, api_key = cli_keys()
    if not listening(url):
        return Outcome(None, f"no gateway answers at {url}; one that watches this directory serves it when it starts")
    deadline = time.monotonic() + timeout
    while True:
        serving = _card(url, name, api_key or admin_key)
        if serving.get("refused") in (401, 403):
            return Outcome(
                None,
                f"the gateway at {url} needs a key to say whether it serves it: set LORA_GATEWAY_API_KEY "
                "(an inference key that may use it) or LORA_GATEWAY_ADMIN_KEY",
            )
        if serving.get("sha256") == sha256:
            version = f"{ModelAddress(name, str(serving.get('version')))}"
            return Outcome(True, f"the gateway at {url} serves it now as {version} (sha256 {sha256[:12]})")
        refused = _refusal(url, name, sha256, admin_key, rejected_before)
        if refused is not None:
            return Outcome(False, f"the gateway at {url} refused it: {refused}")
        if time.monotonic() >= deadline:
            why = "an eval gate may still be running" if serving.get("sha256") else "it may have refused it"
            where = "GET /v1/adapters (admin key)" if not admin_key else "GET /v1/adapters"
            return Outcome(None, f"the gateway at {url} did not serve it within {timeout:g} s ({why}; {where} says)")
        time.sleep(_POLL_S)


def _card(url: str, name: str, api_key: str | None) -> dict[str, Any]:
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(f"{url}/v1/models/{name}", headers=headers, timeout=10)
        if response.status_code in (401, 403):
            return {"refused": response.status_code}
        card = response.json() if response.status_code == 200 else {}
    except (httpx.HTTPError, ValueError):
        return {}
    return card if isinstance(card, dict) else {}


def _refusal(url: str, name: str, sha256: str, admin_key: str | None, rejected_before: float | None) -> str | None:
    import httpx

    if admin_key:
        try:
            listed: list[dict[str, Any]] = httpx.get(
                f"{url}/v1/adapters", headers={"Authorization": f"Bearer {admin_key}"}, timeout=10
            ).json()["data"]
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return None
        entry = next((a for a in listed if a.get("name") == name), None)
        rejected = (entry or {}).get("rejected") or {}
        decided = entry is not None and entry.get("gate_running") is None and entry.get("sha256") != sha256
        if decided and rejected.get("reason") not in (None, "incomplete"):
            return f"{rejected.get('reason')}: {rejected.get('message')}"
        return None
    now = rejections(url)
    if rejected_before is not None and now is not None and now > rejected_before:
        return "see the gateway's log, or GET /v1/adapters with the admin key, for why"
    return None
