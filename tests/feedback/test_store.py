"""The feedback store on SQLite, and on a real PostgreSQL server when one can be started here."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.feedback import Conversation, FeedbackStore, Rating
from server.feedback.export import export
from server.feedback.report import parse_since, report
from tests.support import free_port


def conversation(cid: str, version: int = 1, answer: str = "an answer", **overrides: object) -> Conversation:
    values: dict[str, object] = {
        "completion_id": cid,
        "model": "shop",
        "adapter": "shop",
        "version": version,
        "sha256": "ab" * 32,
        "end_user": "u1",
        "source": "api",
        "messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": f"question {cid}"}],
        "answer": answer,
    }
    values.update(overrides)
    return Conversation(**values)  # type: ignore[arg-type]


def exercise(store: FeedbackStore, tmp_path: Path) -> None:
    """What every backend must do the same way."""
    for i in range(6):
        store.capture(conversation(f"c{i}", version=1 if i < 3 else 2))
    # A rating right after its answer finds it, though the writer may not have run yet.
    stored = store.add("c0", Rating(-1, "thumbs", "wrong", "The right answer."))
    assert stored.conversation.version == 1 and stored.rating.negative and stored.id >= 1
    store.add("c1", Rating(1, "thumbs"))
    store.add("c3", Rating(2, "stars", "meh"))
    store.add("c4", Rating(5, "stars"))
    with pytest.raises(LookupError):
        store.add("nope", Rating(1, "thumbs"))

    data = report(store, "shop")
    by_version = {row["version"]: row for row in data["versions"]}
    assert by_version[1] | {} == {
        "version": 1,
        "answered": 3,
        "feedback": 2,
        "positive": 1,
        "negative": 1,
        "negative_rate": 0.5,
        "mean_stars": None,
        "raters": 1,  # both ratings came from u1
    }
    assert by_version[2]["negative"] == 1 and by_version[2]["mean_stars"] == 3.5
    assert [w["completion_id"] for w in data["worst"]] == ["c0", "c3"]  # a thumbs down ranks as one star
    assert data["worst"][0]["question"] == "question c0" and data["worst"][0]["correction"] == "The right answer."

    done = export(store, "shop", tmp_path / "out", negative=True)
    assert (done.corrected, done.to_review, done.expired) == (1, 1, 0)
    lines = done.dataset.read_text().splitlines()
    assert '"content": "The right answer."' in lines[0] and '"role": "system"' in lines[0]
    assert '"answer_given": "an answer"' in done.review.read_text()

    assert store.purge(now=time.time() + 31 * 86400) == 6  # conversations go; the ratings stay counted
    assert report(store, "shop")["versions"][-1]["feedback"] == 2
    assert export(store, "shop", tmp_path / "later").expired == 4


def test_sqlite(tmp_path: Path) -> None:
    store = FeedbackStore(f"sqlite:///{tmp_path / 'deep' / 'feedback.db'}")
    try:
        exercise(store, tmp_path)
    finally:
        store.close()
    reopened = FeedbackStore(f"sqlite:///{tmp_path / 'deep' / 'feedback.db'}")  # durable across a restart
    try:
        assert report(reopened, "shop")["versions"][0]["feedback"] == 2
    finally:
        reopened.close()


def test_a_row_the_database_refuses_is_dropped_alone_and_the_rest_of_its_batch_is_stored(tmp_path: Path) -> None:
    """A lone surrogate (which the edge refuses; here it is put in directly) used to fail the batch
    insert and take every other conversation in the batch with it."""
    store = FeedbackStore(f"sqlite:///{tmp_path / 'feedback.db'}")
    try:
        store.capture(conversation("before"))
        store.capture(conversation("bad", end_user="\ud800"))
        store.capture(conversation("after"))
        store.flush()
        assert store.conversation("before") is not None and store.conversation("after") is not None
        assert store.conversation("bad") is None and store.refused == 1
    finally:
        store.close()


def test_export_writes_only_what_train_accepts_names_the_rest_and_keeps_tools(tmp_path: Path) -> None:
    from server.datasets.conversations import load_files

    tool = {"type": "function", "function": {"name": "track", "parameters": {"type": "object", "properties": {}}}}
    store = FeedbackStore(f"sqlite:///{tmp_path / 'feedback.db'}")
    try:
        refused_turn = [
            {"role": "user", "content": "Can you hack it?"},
            {"role": "assistant", "content": None, "refusal": "I can't help with that."},
            {"role": "user", "content": "Then where is my order?"},
        ]
        late_system = [
            {"role": "user", "content": "hi"},
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": "where?"},
        ]
        store.capture(conversation("good", tools=[tool]))
        store.capture(conversation("refusal", messages=refused_turn))
        store.capture(conversation("blank"))
        store.capture(conversation("late-system", messages=late_system))
        store.add("good", Rating(-1, "thumbs", None, "It ships today."))
        store.add("refusal", Rating(-1, "thumbs", None, "Order 7 ships today."))
        store.add("blank", Rating(-1, "thumbs", None, "   \n "))
        store.add("late-system", Rating(-1, "thumbs", None, "Here."))
        done = export(store, "shop", tmp_path / "out")
    finally:
        store.close()
    assert done.corrected == 2 and dict(done.left_out) == {
        "blank": "message 2 (assistant) has empty content",
        "late-system": "a system message may only come first",
    }
    dataset = load_files([done.dataset])
    assert not dataset.errors and len(dataset.conversations) == 2  # train takes the whole file
    by_answer = {c.messages[-1].content: c for c in dataset.conversations}
    assert by_answer["It ships today."].tools[0]["function"]["name"] == "track"
    assert by_answer["Order 7 ships today."].messages[1].content == "I can't help with that."


def test_a_database_from_an_earlier_release_gets_the_new_columns(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as old:  # conversations as wave 2 made it: no tools column
        old.execute(
            "CREATE TABLE conversations (completion_id VARCHAR(64) PRIMARY KEY, model VARCHAR(200) NOT NULL, "
            "adapter VARCHAR(64), version INTEGER, sha256 VARCHAR(64), end_user VARCHAR(256), "
            "source VARCHAR(16) NOT NULL, messages TEXT NOT NULL, answer TEXT NOT NULL, created FLOAT NOT NULL)"
        )
    store = FeedbackStore(f"sqlite:///{path}")
    try:
        tool = {"type": "function", "function": {"name": "track"}}
        store.capture(conversation("c1", tools=[tool]))
        kept = store.conversation("c1")
        assert kept is not None and kept.tools == [tool]
    finally:
        store.close()


def test_periods_are_parsed_or_refused() -> None:
    assert parse_since("7d", 1_000_000) == 1_000_000 - 7 * 86400 and parse_since("30m", 100) == 100 - 1800
    for bad in ("7", "d", "-1d", "7y", ""):
        with pytest.raises(ValueError, match="30m, 24h, 7d or 2w"):
            parse_since(bad, 0)


def _postgres_tools() -> Path | None:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").is_file():
            return candidate
    found = shutil.which("initdb")
    return Path(found).parent if found else None


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on loopback (run as the ``postgres`` user when we are root)."""
    tools = _postgres_tools()
    if tools is None:
        if os.environ.get("LORA_GATEWAY_REQUIRE_POSTGRES"):
            pytest.fail("PostgreSQL is required here (LORA_GATEWAY_REQUIRE_POSTGRES) but initdb is not installed")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    pytest.importorskip("psycopg")
    data = Path(tempfile.mkdtemp(prefix="lora-gateway-pg-"))  # not under pytest's root-only tmp: postgres reads it
    prefix: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(data, "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    subprocess.run(
        [*prefix, str(tools / "initdb"), "-D", str(data), "-U", "gw", "-A", "trust"], check=True, capture_output=True
    )
    options = f"-p {port} -c listen_addresses=127.0.0.1 -k {data}"
    subprocess.run(
        [*prefix, str(tools / "pg_ctl"), "-D", str(data), "-o", options, "-w", "-l", str(data / "log"), "start"],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg://gw@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*prefix, str(tools / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True
        )
        shutil.rmtree(data, ignore_errors=True)  # the cluster's ~40 MB, outside pytest's own tmp cleanup


def test_postgresql(postgres_url: str, tmp_path: Path) -> None:
    store = FeedbackStore(postgres_url)
    try:
        exercise(store, tmp_path)
    finally:
        store.close()


def test_the_database_file_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    import stat

    store = FeedbackStore(f"sqlite:///{tmp_path / 'gateway.db'}")
    try:
        store.capture(conversation("c1"))
        store.flush()
    finally:
        store.close()
    for path in tmp_path.glob("gateway.db*"):
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path
