"""``api/disconnects.py``: a client that leaves cancels the work it asked for, and nothing else does.

ASGI's ``receive`` and ``send`` are played by a queue and a list: what these classes promise is
about tasks and cancellation, which the end-to-end tests (``test_chat.py``) see only as metrics.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from server.api.disconnects import CancelOnDisconnect, EventStream


class Client:
    """The ASGI side of one connection: ``leave()`` is the client disconnecting."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.sent: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        return await self.inbox.get()

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    def leave(self) -> None:
        self.inbox.put_nowait({"type": "http.disconnect"})


def test_a_block_that_ends_is_not_cancelled_and_leaves_no_cancellation_behind() -> None:
    async def scenario() -> None:
        client = Client()
        async with CancelOnDisconnect(client.receive) as watch:
            await asyncio.sleep(0.01)
        client.leave()  # the response is complete: a disconnect now is no news
        await asyncio.sleep(0.01)  # would raise CancelledError if the listener had cancelled us
        assert not watch.gone

    asyncio.run(scenario())


def test_a_block_that_never_waits_starts_no_listener_and_one_that_waits_does() -> None:
    """The listener task starts on the loop's next turn: a block that ends first (an answer already
    there) makes none, so the first bytes of a response never wait for one to be made."""

    async def scenario() -> tuple[int, int]:
        client = Client()
        before = len(asyncio.all_tasks())
        async with CancelOnDisconnect(client.receive):
            quick = len(asyncio.all_tasks()) - before  # no task made for a block that has not waited
        await asyncio.sleep(0)  # the turn where the listener would have started: none does
        assert len(asyncio.all_tasks()) == before
        async with CancelOnDisconnect(client.receive):
            await asyncio.sleep(0.01)
            waiting = len(asyncio.all_tasks()) - before
        return quick, waiting

    assert asyncio.run(scenario()) == (0, 1)


def test_a_client_that_leaves_cancels_the_block_and_the_cancellation_stops_there() -> None:
    async def scenario() -> None:
        client = Client()
        reached = []
        watch = CancelOnDisconnect(client.receive)
        asyncio.get_running_loop().call_later(0.02, client.leave)
        async with watch:
            await asyncio.sleep(10)
            reached.append("end of block")
        await asyncio.sleep(0)  # this task goes on: the cancellation was ours, and taken back
        assert watch.gone and reached == []
        current = asyncio.current_task()
        assert current is not None and current.cancelling() == 0

    asyncio.run(scenario())


def test_a_cancellation_from_elsewhere_goes_on_even_when_the_client_left_too() -> None:
    async def request(watch: CancelOnDisconnect, started: asyncio.Event) -> None:
        async with watch:
            started.set()
            await asyncio.sleep(10)

    async def scenario() -> None:
        client, started = Client(), asyncio.Event()
        watch = CancelOnDisconnect(client.receive)
        task = asyncio.create_task(request(watch, started))
        await started.wait()
        client.leave()
        while not watch.gone:  # the listener has cancelled the request for its client...
            await asyncio.sleep(0)
        task.cancel()  # ...and a server shutdown cancels it too, before it runs again
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())


def test_an_event_stream_sends_its_events_then_its_end_with_the_last_message() -> None:
    async def events() -> AsyncIterator[str]:
        yield "data: 1\n\n"
        yield "data: 2\n\n"

    async def scenario() -> None:
        client = Client()
        await EventStream(events(), end="data: [DONE]\n\n", headers={"X-Test": "yes"})(
            {"type": "http"}, client.receive, client.send
        )
        start, *bodies = client.sent
        assert start["type"] == "http.response.start" and start["status"] == 200
        assert (b"content-type", b"text/event-stream; charset=utf-8") in start["headers"]
        assert (b"x-test", b"yes") in start["headers"]
        assert [(m["body"], m["more_body"]) for m in bodies] == [
            (b"data: 1\n\n", True),
            (b"data: 2\n\n", True),
            (b"data: [DONE]\n\n", False),
        ]

    asyncio.run(scenario())


def test_an_event_stream_whose_client_leaves_closes_its_events_at_once() -> None:
    closed = []

    async def events() -> AsyncIterator[str]:
        try:
            yield "data: 1\n\n"
            await asyncio.sleep(10)  # the engine, slow to produce the next token
            yield "data: 2\n\n"
        finally:
            closed.append(True)

    async def scenario() -> None:
        client = Client()
        asyncio.get_running_loop().call_later(0.02, client.leave)
        await EventStream(events(), end="data: [DONE]\n\n")({"type": "http"}, client.receive, client.send)
        assert closed == [True]  # the completion's cleanup ran before the response returned
        assert [m.get("body") for m in client.sent[1:]] == [b"data: 1\n\n"]  # no end for a client that left

    asyncio.run(scenario())
