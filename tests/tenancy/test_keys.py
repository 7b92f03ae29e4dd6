"""API keys: hashed at rest, scoped, revocable; wrong keys of any shape refused (server/tenancy/keys.py)."""

from __future__ import annotations

import random
import string
import time
from pathlib import Path

import pytest

from server.database import open_engine
from server.errors import Unauthorized
from server.tenancy.keys import KEY_PREFIX, ApiKey, KeyStore
from server.tenancy.service import ANYONE, Tenancy


@pytest.fixture
def tenancy(tmp_path: Path) -> Tenancy:
    found = Tenancy(open_engine(f"sqlite:///{tmp_path / 'gateway.db'}"), [b"flat-key"])
    yield found  # type: ignore[misc]
    found.close()


def bearer(secret: str) -> str:
    return f"Bearer {secret}"


def test_the_secret_is_shown_once_and_stored_nowhere(tmp_path: Path, tenancy: Tenancy) -> None:
    key, secret = tenancy.store.create("shop-a", models=("shop-a",))
    assert secret.startswith(KEY_PREFIX) and len(secret) >= 40 and key.prefix == secret[:12]
    tenancy.store.engine.dispose()
    on_disk = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert secret.encode() not in on_disk and secret[12:].encode() not in on_disk  # hashed, not stored
    assert secret not in repr(key.public())


def test_a_key_is_found_by_its_secret_and_loses_access_when_revoked(tenancy: Tenancy) -> None:
    key, secret = tenancy.store.create("shop-a", tenant="acme")
    tenancy.ring.refresh()
    principal = tenancy.authenticate(bearer(secret))
    assert principal.key is not None and principal.key.id == key.id and principal.tenant == "acme"
    tenancy.store.revoke(key.id)
    assert tenancy.ring.refresh()
    with pytest.raises(Unauthorized):
        tenancy.authenticate(bearer(secret))
    with pytest.raises(ValueError):
        tenancy.store.update(key.id, enabled=True)  # revoked for good
    assert tenancy.closed  # revoking the last key does not open the server


def test_disabled_and_expired_keys_are_refused(tenancy: Tenancy) -> None:
    off, off_secret = tenancy.store.create("off")
    tenancy.store.update(off.id, enabled=False)
    old, old_secret = tenancy.store.create("old", expires=time.time() + 3600)
    tenancy.ring.refresh()
    with pytest.raises(Unauthorized):
        tenancy.authenticate(bearer(off_secret))
    assert tenancy.authenticate(bearer(old_secret)).key is not None
    # Its expiry passes (moved into the past rather than waited for: the rule, not the clock).
    tenancy.store.update(old.id, expires=time.time() - 1)
    tenancy.ring.refresh()
    with pytest.raises(Unauthorized):
        tenancy.authenticate(bearer(old_secret))


def test_flat_keys_keep_full_access(tenancy: Tenancy) -> None:
    assert tenancy.authenticate(bearer("flat-key")) is ANYONE
    with pytest.raises(Unauthorized):
        tenancy.authenticate("")


def test_an_open_server_stays_open_until_a_key_exists(tmp_path: Path) -> None:
    tenancy = Tenancy(open_engine(f"sqlite:///{tmp_path / 'g.db'}"), [])
    try:
        assert tenancy.authenticate("") is ANYONE
        tenancy.store.create("first")
        tenancy.ring.refresh()
        with pytest.raises(Unauthorized):
            tenancy.authenticate("")
    finally:
        tenancy.close()


def test_scopes_name_adapters_and_globs_and_the_base_separately() -> None:
    key = ApiKey(id="k", prefix="p", name="n", tenant="t", models=("shop-a", "brand-*"), base=False)
    assert key.may_use("shop-a", "base") and key.may_use("shop-a@3", "base") and key.may_use("brand-x", "base")
    assert not key.may_use("shop-b", "base") and not key.may_use("base", "base") and not key.may_use("shop-ab", "base")
    assert ApiKey(id="k", prefix="p", name="n", tenant="t").may_use("anything", "base")


def test_the_base_permission_covers_every_served_base() -> None:
    bases = ["qwen", "llama"]
    scoped = ApiKey(id="k", prefix="p", name="n", tenant="t", models=("shop-*",), base=False)
    assert not scoped.may_use("qwen", bases) and not scoped.may_use("llama", bases)
    assert scoped.may_use("shop-a", bases) and not scoped.may_use("l", bases)  # a list, not a string's letters
    both = ApiKey(id="k", prefix="p", name="n", tenant="t", models=(), base=True)
    assert both.may_use("qwen", bases) and both.may_use("llama", bases) and not both.may_use("mistral", bases)


def test_random_keys_and_prefixes_of_real_keys_are_all_refused(tenancy: Tenancy) -> None:
    secrets_ = [tenancy.store.create(f"k{i}")[1] for i in range(5)]
    tenancy.ring.refresh()
    rng = random.Random(0)
    alphabet = string.ascii_letters + string.digits + "-_"
    tries = [KEY_PREFIX + "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60))) for _ in range(1000)]
    tries += [s[:cut] for s in secrets_ for cut in range(1, len(s))]  # every proper prefix of every real key
    tries += [s + "x" for s in secrets_] + [s.upper() for s in secrets_]
    for attempt in tries:
        with pytest.raises(Unauthorized):
            tenancy.authenticate(bearer(attempt))
    for secret in secrets_:
        assert tenancy.authenticate(bearer(secret)).key is not None


def test_keys_are_found_by_id_prefix_or_name(tenancy: Tenancy) -> None:
    key, _ = tenancy.store.create("shop-a")
    assert tenancy.store.find(key.id) == tenancy.store.find(key.prefix) == tenancy.store.find("shop-a")
    tenancy.store.create("shop-a")
    with pytest.raises(LookupError, match="2 keys match"):
        tenancy.store.find("shop-a")
    assert KeyStore(tenancy.store.engine).find(key.id).name == "shop-a"


def test_a_key_named_like_another_keys_id_never_blocks_revoking_by_that_id(tenancy: Tenancy) -> None:
    victim, _ = tenancy.store.create("shop-a")
    tenancy.store.create(victim.id)  # a key whose name is the victim's id (and one named like its prefix)
    tenancy.store.create(victim.prefix)
    assert tenancy.store.revoke(victim.id).id == victim.id
    assert tenancy.store.find(victim.prefix).id == victim.id  # a prefix outranks a name, too
