"""A chat channel's answering, shared by every integration: what a message from a chat app becomes.

A message is answered by ``server.completions.complete``, the function behind
``/v1/chat/completions``, so a chat user gets exactly what an API client asking the same model
gets, with the same admission, adapter leasing and metrics. State is bounded: delivery ids are
remembered for ``dedup_seconds`` (apps retry an unanswered callback), and, for bots with
``history_turns``, each user's last exchanges until ``conversation_seconds`` idle; each with a cap
on entries. Answering never raises into the app's callback: whatever fails is logged and the
caller shows the bot's apology.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import replace
from typing import Any, Protocol, TypeVar

from ..completions import complete
from ..errors import ContextLengthExceeded, GatewayError, Unauthorized
from ..feedback import Rating
from ..gateway import Gateway
from ..openai.protocol import ChatCompletionRequest, ChatMessage
from ..recording import record
from ..tenancy.service import ANYONE, Principal
from .store import ExpiringStore
from .text import answer_text

logger = logging.getLogger(__name__)

Conversation = tuple[tuple[str, str], ...]  # (user's message, answer), oldest first
Speaker = tuple[str, str, str]  # (bot, group chat id or "", user)
BOOT_WAIT = 120.0  # a message that arrives while the model loads waits for it rather than failing
T = TypeVar("T")


class BotSettings(Protocol):
    """What a channel needs of a bot's configuration (WeCom's ``BotConfig`` is one)."""

    @property
    def model(self) -> str: ...
    @property
    def system_prompt(self) -> str | None: ...
    @property
    def temperature(self) -> float | None: ...
    @property
    def max_tokens(self) -> int | None: ...
    @property
    def history_turns(self) -> int: ...
    @property
    def key(self) -> str | None: ...
    @property
    def feedback_keywords(self) -> Mapping[str, int]: ...


class ChatChannel:
    def __init__(
        self,
        gateway: Gateway,
        source: str,
        *,
        dedup_seconds: float,
        dedup_entries: int,
        conversation_seconds: float,
        max_conversations: int,
    ) -> None:
        self.gateway = gateway
        self.source = source  # the conversations' and ratings' source: "wecom", ...
        self._seen: ExpiringStore[tuple[str, str], Any] = ExpiringStore(dedup_seconds, dedup_entries)
        self._conversations: ExpiringStore[Speaker, Conversation] = ExpiringStore(
            conversation_seconds, max_conversations
        )
        # speaker -> the id of the last answer, which a feedback keyword rates
        self._last_answer: ExpiringStore[Speaker, str] = ExpiringStore(conversation_seconds, max_conversations)
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def pending(self) -> int:
        """Answers started and not finished yet (generating or being delivered)."""
        return len(self._tasks)

    def first_delivery(self, bot: str, message_id: str, value: T) -> tuple[T, bool]:
        """(what the first delivery of ``message_id`` stored, whether this is that first delivery):
        apps retry a callback they think unanswered, and a retry must not be answered twice."""
        return self._seen.setdefault((bot, message_id), value)

    @staticmethod
    def feedback_keyword(config: BotSettings, content: str) -> int | None:
        """The rating a message gives when it is one of the bot's feedback keywords."""
        return config.feedback_keywords.get(content.strip())

    async def answer(
        self,
        bot: str,
        config: BotSettings,
        speaker: Speaker,
        content: str,
        on_text: Callable[[int, str], None] | None = None,
        completion: str | None = None,
    ) -> str | None:
        """The model's answer to ``content``, or None when it could not be had (logged, not raised).

        With ``history_turns``, the speaker's last exchanges go first, and this one is remembered
        once answered (an apology is not: it would teach the model to apologise).
        """
        history = (self._conversations.get(speaker) or ()) if config.history_turns else ()
        try:
            await asyncio.wait_for(self.gateway.booted.wait(), BOOT_WAIT)
            while True:
                try:
                    # The bot's max_tokens is an upper bound, clamped to the room the prompt leaves.
                    response = await complete(
                        self.gateway,
                        _request(config, history, content, speaker[2]),
                        on_text,
                        default_max_tokens=config.max_tokens,
                        source=self.source,
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
            logger.warning("%s bot %s: no answer from model %s: %s", self.source, bot, config.model, exc)
            return None
        text = answer_text(response.choices[0].message.content or "")
        self._last_answer.put(speaker, response.id)
        if config.history_turns and text:
            self._conversations.put(speaker, (*history, (content, text))[-config.history_turns :])
        return text

    def _principal(self, config: BotSettings) -> Principal:
        """The tenant a bot answers as (its ``key``); a key that is gone or revoked stops the bot
        (its users get the apology, the log says why) rather than serve it without limits."""
        if config.key is None:
            return ANYONE
        for key in self.gateway.tenancy.ring.keys():
            if config.key in (key.id, key.prefix, key.name) and key.usable():
                return Principal(key)
        raise Unauthorized(f"the bot's key {config.key!r} is not a usable API key (revoked, disabled or unknown)")

    async def rate_last(self, bot: str, speaker: Speaker, rating: int, word: str) -> None:
        """A feedback keyword rates the last answer this bot gave this user (in this chat)."""
        completion = self._last_answer.get(speaker)
        if completion is None:
            logger.info("%s bot %s: feedback %r with no recent answer to rate", self.source, bot, word)
            return
        await self.record(bot, completion, Rating(rating, "thumbs", None, None, self.source, speaker[2]))

    async def record(self, bot: str, completion: str, rating: Rating) -> None:
        """Store a rating of ``completion``; feedback off or an answer no longer kept is logged, never raised."""
        try:
            await record(self.gateway, completion, replace(rating, source=self.source))
        except GatewayError as exc:
            logger.warning("%s bot %s: feedback on %s not stored: %s", self.source, bot, completion, exc)

    def spawn(self, work: Coroutine[Any, Any, object]) -> asyncio.Task[Any]:
        """Run ``work`` after the callback returned; held here so it is neither collected nor lost."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    async def close(self) -> None:
        """Cancel the answers still running (shutdown) and wait for them to end."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("%s: an answer failed unexpectedly", self.source, exc_info=task.exception())


def _request(config: BotSettings, history: Conversation, content: str, user: str) -> ChatCompletionRequest:
    messages = [ChatMessage(role="system", content=config.system_prompt)] if config.system_prompt else []
    for asked, answered in history:
        messages += [ChatMessage(role="user", content=asked), ChatMessage(role="assistant", content=answered)]
    messages.append(ChatMessage(role="user", content=content))
    # The app's user id is the end user: it keeps them on one version under a traffic split.
    return ChatCompletionRequest(model=config.model, messages=messages, temperature=config.temperature, user=user)
