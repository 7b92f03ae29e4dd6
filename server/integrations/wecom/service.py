"""What happens to a WeCom message: its signature and envelope, then the shared chat channel
(``server.channels.chat``: dedup, history, keyword feedback, the answer through the gateway's own
chat path), then delivery: by ``message/send`` for an app, by the stream WeCom polls for an AI bot.

State is bounded: message ids are remembered for ``dedup_seconds`` (WeCom retries an unanswered
callback twice, and an AI bot may repeat one), answers being polled for ``stream_seconds``, each
user's last exchanges (``history_turns``) until ``conversation_seconds`` idle; each with a cap on
entries. Answering never raises into the callback: whatever fails, the user gets the bot's apology
rather than silence.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass, field, replace
from typing import Literal

from fastapi import APIRouter

from ...channels.chat import ChatChannel, Speaker
from ...channels.store import ExpiringStore
from ...channels.text import answer_text, truncate_utf8
from ...errors import NotFound
from ...feedback import Rating
from ...gateway import Gateway
from .api import AppCredentials, WeComApi, WeComApiError
from .config import BotConfig, WeComSettings
from .crypto import WeComCrypto
from .messages import (
    AppMessage,
    BotMessage,
    MalformedMessage,
    find_ciphertext,
    signed_fields,
    stream_reply,
)

logger = logging.getLogger(__name__)

STREAM_CONTENT_BYTES = 20480


@dataclass(frozen=True)
class Bot:
    name: str
    config: BotConfig
    crypto: WeComCrypto

    @classmethod
    def build(cls, name: str, config: BotConfig) -> Bot:
        crypto = WeComCrypto(
            config.token.get_secret_value(), config.encoding_aes_key.get_secret_value(), config.expected_receive_id
        )
        return cls(name, config, crypto)

    @property
    def credentials(self) -> AppCredentials:
        assert self.config.corp_id and self.config.corp_secret and self.config.agent_id is not None
        return AppCredentials(self.config.corp_id, self.config.corp_secret.get_secret_value(), self.config.agent_id)


@dataclass
class StreamAnswer:
    """An AI-bot answer as WeCom polls it: the model's raw output so far, and once complete, the
    final text. Polls show ``answer_text`` of the raw output, so they grow towards the final text."""

    stream_id: str
    raw: str = ""
    final: str | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    feedback_id: str | None = None  # the completion id WeCom's feedback_event will name (--feedback on)

    @property
    def text(self) -> str:
        return answer_text(self.raw) if self.final is None else self.final

    @property
    def finished(self) -> bool:
        return self.final is not None

    def reply(self) -> bytes:
        return stream_reply(
            self.stream_id, truncate_utf8(self.text, STREAM_CONTENT_BYTES), self.finished, self.feedback_id
        )

    def finish(self, text: str) -> None:
        self.final = text


@dataclass(frozen=True)
class Query:
    """A callback's signed query parameters."""

    msg_signature: str
    timestamp: str
    nonce: str


class WeComService:
    """The WeCom integration (``server.integrations.Integration``): its routes, start and close."""

    name = "wecom"

    def __init__(self, settings: WeComSettings, gateway: Gateway, router: APIRouter | None = None) -> None:
        self.gateway = gateway
        self.router = router or APIRouter()  # its routes (``routes.router``), which import this module
        self.metrics = gateway.metrics
        self.bots = {name: Bot.build(name, config) for name, config in settings.bots.items()}
        self.api = WeComApi(settings.api_base)
        self.channel = ChatChannel(
            gateway,
            "wecom",
            dedup_seconds=settings.dedup_seconds,
            dedup_entries=settings.dedup_entries,
            conversation_seconds=settings.conversation_seconds,
            max_conversations=settings.max_conversations,
        )
        self._streams: ExpiringStore[str, StreamAnswer] = ExpiringStore(
            settings.stream_seconds, settings.max_streams, on_evict=_cancel_answer
        )

    @property
    def pending(self) -> int:
        """Answers started and not finished yet (generating or being delivered)."""
        return self.channel.pending

    async def start(self) -> None:
        logger.info("WeCom bots: %s", ", ".join(f"/wecom/{name}" for name in self.bots))

    def bot(self, name: str) -> Bot:
        bot = self.bots.get(name)
        if bot is None:
            raise NotFound(f"No WeCom bot named `{name}` is configured.")
        return bot

    async def close(self) -> None:
        await self.channel.close()
        await self.api.aclose()

    # -- callbacks ---------------------------------------------------------------------------

    def verify_url(self, bot: Bot, query: Query, echostr: str) -> str:
        """The plaintext of ``echostr``, which WeCom expects back to accept the callback URL."""
        plain = bot.crypto.open(query.msg_signature, query.timestamp, query.nonce, echostr)
        try:
            return plain.decode()
        except UnicodeDecodeError:
            raise MalformedMessage("The echostr does not hold text.") from None

    def on_app_callback(self, bot: Bot, query: Query, body: bytes) -> str:
        """Accept a self-built app's message; the answer goes out later by message/send. Returns the outcome."""
        message = AppMessage.from_xml(self._open(bot, query, body, "xml"))
        _, new = self.channel.first_delivery(bot.name, message.msg_id, "")
        if not new:
            return "duplicate"
        if message.msg_type == "event":
            return "ignored"
        if message.msg_type != "text" or not message.content.strip():
            self.channel.spawn(self._send(bot, message.user, bot.config.unsupported_reply))
            return "unsupported"
        rating = self.channel.feedback_keyword(bot.config, message.content)
        if rating is not None:
            self.channel.spawn(self.channel.rate_last(bot.name, (bot.name, "", message.user), rating, message.content))
            self.channel.spawn(self._send(bot, message.user, bot.config.feedback_reply))
            return "feedback"
        self.channel.spawn(self._answer_app(bot, message, time.perf_counter()))
        return "accepted"

    def on_bot_callback(self, bot: Bot, query: Query, body: bytes) -> tuple[bytes | None, str]:
        """(plaintext reply or None for an empty 200, outcome) for an AI bot's callback."""
        message = BotMessage.from_json(self._open(bot, query, body, "json"))
        if message.msg_type == "stream":
            assert message.stream_id is not None
            reply, known = self._stream_now(bot, message.stream_id)
            return reply, "stream_refresh" if known else "stream_expired"
        if message.msg_type == "event":
            if message.feedback is None:
                return None, "ignored"
            _, new = self.channel.first_delivery(bot.name, message.msg_id, "")
            if new and message.feedback.type in (1, 2):  # 3: the user withdrew a rating; nothing to store
                rating = Rating(1 if message.feedback.type == 1 else -1, "thumbs", message.feedback.content or None)
                self.channel.spawn(
                    self.channel.record(bot.name, message.feedback.id, replace(rating, end_user=message.user))
                )
            return None, "feedback" if new else "duplicate"
        stream_id, new = self.channel.first_delivery(bot.name, message.msg_id, secrets.token_hex(16))
        if not new:
            return self._stream_now(bot, stream_id)[0], "duplicate"
        feedback_id = f"chatcmpl-{stream_id}" if self.gateway.feedback is not None else None
        answer, _ = self._streams.setdefault(stream_id, StreamAnswer(stream_id, feedback_id=feedback_id))
        if message.msg_type != "text" or not message.content.strip():
            answer.finish(bot.config.unsupported_reply)
            return answer.reply(), "unsupported"
        speaker = (bot.name, message.chat_id, message.user)
        rating_word = self.channel.feedback_keyword(bot.config, message.content)
        if rating_word is not None:
            answer.feedback_id = None  # this reply is an acknowledgement, not an answer to rate
            answer.finish(bot.config.feedback_reply)
            self.channel.spawn(self.channel.rate_last(bot.name, speaker, rating_word, message.content))
            return answer.reply(), "feedback"
        answer.task = self.channel.spawn(
            self._answer_stream(bot, answer, speaker, message.content, time.perf_counter())
        )
        return answer.reply(), "accepted"

    @staticmethod
    def _open(bot: Bot, query: Query, body: bytes, kind: Literal["json", "xml"]) -> bytes:
        """The decrypted message: signature first (on the ciphertext, found without parsing), then
        the body is parsed, then decrypted. An unsigned body is never parsed."""
        encrypted = find_ciphertext(body, kind)
        bot.crypto.verify(query.msg_signature, query.timestamp, query.nonce, encrypted)
        signed_fields(body, kind, encrypted)
        return bot.crypto.decrypt(encrypted)

    def _stream_now(self, bot: Bot, stream_id: str) -> tuple[bytes, bool]:
        """(the stream's reply now, whether it is still known); an expired one (or one from before a
        restart) finishes with the apology rather than leaving WeCom polling."""
        answer = self._streams.get(stream_id)
        if answer is None:
            return stream_reply(stream_id, bot.config.apology, True), False
        return answer.reply(), True

    # -- answering ---------------------------------------------------------------------------

    async def _answer_app(self, bot: Bot, message: AppMessage, started: float) -> None:
        text = await self.channel.answer(bot.name, bot.config, (bot.name, "", message.user), message.content)
        if await self._send(bot, message.user, text or bot.config.apology):
            self.metrics.wecom_reply_seconds.labels(bot.name).observe(time.perf_counter() - started)

    async def _answer_stream(
        self, bot: Bot, answer: StreamAnswer, speaker: Speaker, content: str, started: float
    ) -> None:
        def grow(index: int, piece: str) -> None:
            answer.raw += piece

        text = await self.channel.answer(bot.name, bot.config, speaker, content, grow, answer.feedback_id)
        if text is None:  # failed part-way: keep what the user saw, then apologise
            shown = answer.text
            answer.finish(f"{shown}\n\n{bot.config.apology}" if shown else bot.config.apology)
        else:  # answer_text of the whole output: what the polls grew towards, and what was remembered
            answer.finish(text or bot.config.apology)
        self.metrics.wecom_reply_seconds.labels(bot.name).observe(time.perf_counter() - started)

    async def _send(self, bot: Bot, user: str, text: str) -> bool:
        try:
            sent = await self.api.send_text(bot.credentials, user, text)
        except WeComApiError as exc:
            self.metrics.wecom_sends.labels(bot.name, "error").inc()
            logger.warning("wecom bot %s: could not deliver an answer: %s", bot.name, exc)
            return False
        self.metrics.wecom_sends.labels(bot.name, "ok").inc(sent)
        return True


def _cancel_answer(answer: StreamAnswer) -> None:
    if answer.task is not None and not answer.task.done():
        answer.task.cancel()
