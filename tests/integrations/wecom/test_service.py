"""Service pieces that the end-to-end tests (test_routes.py) cannot reach cheaply."""

from __future__ import annotations

import json

import pytest

from server.channels.text import answer_text
from server.integrations.wecom.config import BotConfig
from server.integrations.wecom.crypto import ReceiveIdMismatch
from server.integrations.wecom.service import STREAM_CONTENT_BYTES, Bot, StreamAnswer

KEY = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR"


def test_a_stream_reply_never_exceeds_wecoms_byte_limit() -> None:
    answer = StreamAnswer("s1", raw="答" * 10_000)  # 30,000 bytes
    content = json.loads(answer.reply())["stream"]["content"]
    assert len(content.encode()) <= STREAM_CONTENT_BYTES
    assert content == "答" * (STREAM_CONTENT_BYTES // 3)


def test_bots_seal_for_their_own_receive_id() -> None:
    app = Bot.build(
        "shop",
        BotConfig(
            channel="app", model="m", token="t", encoding_aes_key=KEY, corp_id="ww1", corp_secret="s", agent_id=7
        ),
    )
    aibot = Bot.build("helper", BotConfig(channel="aibot", model="m", token="t", encoding_aes_key=KEY))
    assert app.crypto.decrypt(app.crypto.encrypt(b"x")) == b"x"
    assert aibot.crypto.decrypt(aibot.crypto.encrypt(b"x")) == b"x"
    with pytest.raises(ReceiveIdMismatch):  # same key and token, but sealed for the corp, not the AI bot
        aibot.crypto.decrypt(app.crypto.encrypt(b"x"))
    assert (app.credentials.corp_id, app.credentials.agent_id) == ("ww1", 7)
    assert (app.config.expected_receive_id, aibot.config.expected_receive_id) == ("ww1", "")


@pytest.mark.parametrize(
    "pieces", [["\n\n", "Hello", " ", "world", " \n"], [" ", "\n"], ["你好", "\n", "，世界", "  "], ["a"]]
)
def test_a_stream_shows_the_answer_text_growing_towards_what_is_sent_and_remembered(pieces: list[str]) -> None:
    """Polls of an AI-bot stream only extend what they showed, and end on exactly ``answer_text``
    of the whole output: the text a conversation remembers and a self-built app sends."""
    stream = StreamAnswer("s")
    shown = [stream.text]
    for piece in pieces:
        stream.raw += piece
        shown.append(stream.text)
    final = answer_text("".join(pieces))
    stream.finish(final)
    shown.append(stream.text)
    assert all(later.startswith(earlier) for earlier, later in zip(shown, shown[1:]))
    assert shown[-1] == final == "".join(pieces).strip()
    assert stream.finished
