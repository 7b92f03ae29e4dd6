"""What happens to a WeCom message: dedup, answer through the gateway's own chat path, deliver.

A message is answered by ``server.completions.complete``, the function behind
``/v1/chat/completions``, so a WeCom user gets exactly what an API client asking the same model
gets, with the same admission, adapter leasing and metrics.

State is bounded: message ids are remembered for ``dedup_seconds`` (WeCom retries an unanswered
callback twice, and an AI bot may repeat one), answers being polled for ``stream_seconds``, and, for
bots with ``history_turns``, each user's last exchanges until ``conversation_seconds`` idle; each
with a cap on entries. Answering never raises into the callback: whatever fails, the user gets the
bot's apology rather than silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from ...completions import complete
from ...errors import ContextLengthExceeded, GatewayError, NotFound, Unauthorized
from ...feedback import Rating
from ...gateway import Gateway
from ...openai.protocol import ChatCompletionRequest, ChatMessage
from ...recording import record
from ...tenancy.service import ANYONE, Principal
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
from .store import ExpiringStore
from .text import answer_text, truncate_utf8

logger = logging.getLogger(__name__)

STREAM_CONTENT_BYTES = 20480
Conversation = tuple[tuple[str, str], ...]  # (user's message, answer), oldest first
_BOOT_WAIT = 120.0  # a message that arrives while the model loads waits for it rather than failing


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
    def __init__(self, settings: WeComSettings, gateway: Gateway) -> None:
        self.gateway = gateway
        self.metrics = gateway.metrics
        self.bots = {name: Bot.build(name, config) for name, config in settings.bots.items()}
        self.api = WeComApi(settings.api_base)
        self._seen: ExpiringStore[tuple[str, str], str] = ExpiringStore(settings.dedup_seconds, settings.dedup_entries)
        self._streams: ExpiringStore[str, StreamAnswer] = ExpiringStore(
            settings.stream_seconds, settings.max_streams, on_evict=_cancel_answer
        )
        # (bot, group chat id or "", user) -> the last exchanges, for bots with history_turns > 0
        self._conversations: ExpiringStore[tuple[str, str, str], Conversation] = ExpiringStore(
            settings.conversation_seconds, settings.max_conversations
        )
        # (bot, group chat id or "", user) -> the id of the last answer, which a feedback keyword rates
        self._last_answer: ExpiringStore[tuple[str, str, str], str] = ExpiringStore(
            settings.conversation_seconds, settings.max_conversations
        )
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def pending(self) -> int:
        """Answers started and not finished yet (generating or being delivered)."""
        return len(self._tasks)

    def bot(self, name: str) -> Bot:
        bot = self.bots.get(name)
        if bot is None:
            raise NotFound(f"No WeCom bot named `{name}` is configured.")
        return bot

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
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
        _, new = self._seen.setdefault((bot.name, message.msg_id), "")
        if not new:
            return "duplicate"
        if message.msg_type == "event":
            return "ignored"
        if message.msg_type != "text" or not message.content.strip():
            self._spawn(self._send(bot, message.user, bot.config.unsupported_reply))
            return "unsupported"
        rating = bot.config.feedback_keywords.get(message.content.strip())
        if rating is not None:
            self._spawn(self._keyword_feedback(bot, (bot.name, "", message.user), rating, message.content))
            self._spawn(self._send(bot, message.user, bot.config.feedback_reply))
            return "feedback"
        self._spawn(self._answer_app(bot, message, time.perf_counter()))
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
            _, new = self._seen.setdefault((bot.name, message.msg_id), "")
            if new and message.feedback.type in (1, 2):  # 3: the user withdrew a rating; nothing to store
                rating = Rating(1 if message.feedback.type == 1 else -1, "thumbs", message.feedback.content or None)
                self._spawn(self._record(bot, message.feedback.id, replace(rating, end_user=message.user)))
            return None, "feedback" if new else "duplicate"
        stream_id, new = self._seen.setdefault((bot.name, message.msg_id), secrets.token_hex(16))
        if not new:
            return self._stream_now(bot, stream_id)[0], "duplicate"
        feedback_id = f"chatcmpl-{stream_id}" if self.gateway.feedback is not None else None
        answer, _ = self._streams.setdefault(stream_id, StreamAnswer(stream_id, feedback_id=feedback_id))
        if message.msg_type != "text" or not message.content.strip():
            answer.finish(bot.config.unsupported_reply)
            return answer.reply(), "unsupported"
        speaker = (bot.name, message.chat_id, message.user)
        rating_word = bot.config.feedback_keywords.get(message.content.strip())
        if rating_word is not None:
            answer.feedback_id = None  # this reply is an acknowledgement, not an answer to rate
            answer.finish(bot.config.feedback_reply)
            self._spawn(self._keyword_feedback(bot, speaker, rating_word, message.content))
            return answer.reply(), "feedback"
        answer.task = self._spawn(self._answer_stream(bot, answer, speaker, message.content, time.perf_counter()))
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
        text = await self._generate(bot, (bot.name, "", message.user), message.content)
        if await self._send(bot, message.user, text or bot.config.apology):
            self.metrics.wecom_reply_seconds.labels(bot.name).observe(time.perf_counter() - started)

    async def _answer_stream(
        self, bot: Bot, answer: StreamAnswer, speaker: tuple[str, str, str], content: str, started: float
    ) -> None:
        def grow(index: int, piece: str) -> None:
            answer.raw += piece

        text = await self._generate(bot, speaker, content, grow, answer.feedback_id)
        if text is None:  # failed part-way: keep what the user saw, then apologise
            shown = answer.text
            answer.finish(f"{shown}\n\n{bot.config.apology}" if shown else bot.config.apology)
        else:  # answer_text of the whole output: what the polls grew towards, and what was remembered
            answer.finish(text or bot.config.apology)
        self.metrics.wecom_reply_seconds.labels(bot.name).observe(time.perf_counter() - started)

    async def _generate(
        self,
        bot: Bot,
        speaker: tuple[str, str, str],
        content: str,
        on_text: Callable[[int, str], None] | None = None,
        completion: str | None = None,
    ) -> str | None:
        """The model's answer to ``content``, or None when it could not be had (logged, not raised).

        With ``history_turns``, the speaker's last exchanges go first, and this one is remembered
        once answered (an apology is not: it would teach the model to apologise).
        """
        config = bot.config
        history = (self._conversations.get(speaker) or ()) if config.history_turns else ()
        try:
            await asyncio.wait_for(self.gateway.booted.wait(), _BOOT_WAIT)
            while True:
                try:
                    # The bot's max_tokens is an upper bound, clamped to the room the prompt leaves.
                    response = await complete(
                        self.gateway,
                        self._request(config, history, content, speaker[2]),
                        on_text,
                        default_max_tokens=config.max_tokens,
                        source="wecom",
                        completion=completion,
                        principal=self._principal(config),
                    )
                    break
                except ContextLengthExceeded:
                    if not history:
                        raise
                    history = history[1:]  # the oldest exchange goes first, never the new message
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure becomes the apology; the reason goes to the log
            logger.warning("wecom bot %s: no answer from model %s: %s", bot.name, config.model, exc)
            return None
        text = answer_text(response.choices[0].message.content or "")
        self._last_answer.put(speaker, response.id)
        if config.history_turns and text:
            self._conversations.put(speaker, (*history, (content, text))[-config.history_turns :])
        return text

    def _principal(self, config: BotConfig) -> Principal:
        """The tenant a bot answers as (its ``key``); a key that is gone or revoked stops the bot
        (its users get the apology, the log says why) rather than serve it without limits."""
        if config.key is None:
            return ANYONE
        for key in self.gateway.tenancy.ring.keys():
            if config.key in (key.id, key.prefix, key.name) and key.usable():
                return Principal(key)
        raise Unauthorized(f"the bot's key {config.key!r} is not a usable API key (revoked, disabled or unknown)")

    @staticmethod
    def _request(config: BotConfig, history: Conversation, content: str, user: str) -> ChatCompletionRequest:
        messages = [ChatMessage(role="system", content=config.system_prompt)] if config.system_prompt else []
        for asked, answered in history:
            messages += [ChatMessage(role="user", content=asked), ChatMessage(role="assistant", content=answered)]
        messages.append(ChatMessage(role="user", content=content))
        # The WeCom user id is the end user: it keeps them on one version under a traffic split.
        return ChatCompletionRequest(model=config.model, messages=messages, temperature=config.temperature, user=user)

    async def _keyword_feedback(self, bot: Bot, speaker: tuple[str, str, str], rating: int, word: str) -> None:
        """A feedback keyword rates the last answer this bot gave this user (in this chat)."""
        completion = self._last_answer.get(speaker)
        if completion is None:
            logger.info("wecom bot %s: feedback %r with no recent answer to rate", bot.name, word)
            return
        await self._record(bot, completion, Rating(rating, "thumbs", None, None, "wecom", speaker[2]))

    async def _record(self, bot: Bot, completion: str, rating: Rating) -> None:
        try:
            await record(self.gateway, completion, replace(rating, source="wecom"))
        except GatewayError as exc:  # feedback off, or an answer no longer kept: logged, never raised
            logger.warning("wecom bot %s: feedback on %s not stored: %s", bot.name, completion, exc)

    async def _send(self, bot: Bot, user: str, text: str) -> bool:
        try:
            sent = await self.api.send_text(bot.credentials, user, text)
        except WeComApiError as exc:
            self.metrics.wecom_sends.labels(bot.name, "error").inc()
            logger.warning("wecom bot %s: could not deliver an answer: %s", bot.name, exc)
            return False
        self.metrics.wecom_sends.labels(bot.name, "ok").inc(sent)
        return True

    def _spawn(self, work: Coroutine[Any, Any, object]) -> asyncio.Task[Any]:
        """Run ``work`` after the callback returned; held here so it is neither collected nor lost."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("wecom: an answer failed unexpectedly", exc_info=task.exception())


def _cancel_answer(answer: StreamAnswer) -> None:
    if answer.task is not None and not answer.task.done():
        answer.task.cancel()
