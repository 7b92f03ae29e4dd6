"""``lora-gateway keys|usage|audit`` and a --database that cannot be opened (server/tenancy/cli.py, server/cli.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "server", *args], capture_output=True, text=True, timeout=120)


def test_keys_are_created_listed_updated_and_revoked(tmp_path: Path) -> None:
    where = ["--adapters-dir", str(tmp_path)]
    created = run("keys", "create", "shop-a", "--tenant", "acme", "--models", "shop-a,brand-*", "--no-base", *where)
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip().splitlines()[-1]
    updated = run("keys", "update", "shop-a", "--rpm", "120", "--expires", "30d", "--disable", *where)
    assert updated.returncode == 0, updated.stderr
    (key,) = json.loads(run("keys", "list", "--json", *where).stdout)
    assert key["tenant"] == "acme" and key["models"] == ["shop-a", "brand-*"] and key["base"] is False
    assert (
        key["requests_per_minute"] == 120 and key["enabled"] is False and key["expires"] > key["created"] + 29 * 86400
    )
    assert secret not in json.dumps(key) and key["prefix"] == secret[:12]
    revoked = run("keys", "revoke", key["id"], *where)
    assert revoked.returncode == 0 and "No usable key is left" in revoked.stdout  # how to get back is said
    again = run("keys", "update", key["id"], "--enable", *where)
    assert again.returncode != 0 and "revoked" in again.stderr
    audit = run("audit", "--json", *where)
    assert [e["action"] for e in json.loads(audit.stdout)] == ["key.revoke", "key.update", "key.create"]


def test_bad_flags_are_one_line_errors(tmp_path: Path) -> None:
    where = ["--adapters-dir", str(tmp_path)]
    for args, says in (
        (["keys", "create", "x", "--rpm", "0"], "requests_per_minute"),
        (["keys", "create", "x", "--models", "../etc"], "models"),
        (["keys", "create", "x", "--expires", "someday"], "--expires"),
        (["keys", "revoke", "nobody"], "no key"),
        (["usage", "--since", "forever"], "--since"),
    ):
        done = run(*args, *where)
        assert done.returncode != 0 and says in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_database_that_cannot_be_opened_stops_serve_in_one_line(base_model: Path, tmp_path: Path) -> None:
    done = run(
        "serve", "--model", str(base_model), "--adapters-dir", str(tmp_path), "--database", "nonsense://u:pw-123@x/db"
    )
    assert done.returncode == 1 and "pw-123" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("lora-gateway: --database: ")
