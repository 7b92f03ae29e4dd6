"""The chunks nearly every chat stream is made of, rendered without building their models: the
role that opens a choice (``RolePiece``), a piece of text (``TextPiece``), the finish that closes
it (``FinishPiece``).

Built as three pydantic models and dumped, one chunk cost about 4 µs; rendered from a template cut
out of the real model's own JSON, under half a microsecond, byte for byte the same (the varying
fields are written by pydantic's own serializer). A template depends on the served model's name,
the fingerprint, the fields left out and the piece's shape, never on the stream, so each is cut
once per process (``_cut``) and a stream's first chunk, which a client waits on, costs no more than
its others. A 16-token stream renders 18 chunks, all of them here.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

import pydantic_core

from ..engine.base import FinishReason
from .protocol import ChatCompletionChunk, ChatCompletionChunkChoice, DeltaMessage

# Stand-ins for the varying fields while a template is cut; none can be in a name or fingerprint
# (JSON escapes the NULs, and the count is checked anyway: a template is never guessed).
_ID = "\u0000lora-gateway-id\u0000"
_CREATED = 2**53 - 1
_TEXT = "\u0000lora-gateway-text\u0000"
_UNCUT: tuple[str, ...] = ("",)  # a cut not looked up yet (None: looked up, and there is none)


@dataclass(slots=True, frozen=True)
class StreamPiece:
    """A chunk of one choice (``index``) in one of the shapes a ``ChunkTemplate`` renders."""

    index: int

    def choice(self) -> ChatCompletionChunkChoice:
        raise NotImplementedError


@dataclass(slots=True, frozen=True)
class RolePiece(StreamPiece):
    """The chunk that opens a choice: ``{"role": "assistant", "content": ""}``."""

    def choice(self) -> ChatCompletionChunkChoice:
        return ChatCompletionChunkChoice(index=self.index, delta=DeltaMessage(role="assistant", content=""))


@dataclass(slots=True, frozen=True)
class TextPiece(StreamPiece):
    """A chunk whose delta is only ``text``: no role, logprobs, tool calls or finish reason."""

    text: str

    def choice(self) -> ChatCompletionChunkChoice:
        return ChatCompletionChunkChoice(index=self.index, delta=DeltaMessage(content=self.text))


@dataclass(slots=True, frozen=True)
class FinishPiece(StreamPiece):
    """The chunk that closes a choice: an empty delta and its ``reason``."""

    reason: FinishReason

    def choice(self) -> ChatCompletionChunkChoice:
        return ChatCompletionChunkChoice(index=self.index, delta=DeltaMessage(), finish_reason=self.reason)


def piece_chunk(piece: StreamPiece, id: str, created: int, model: str, system_fingerprint: str) -> ChatCompletionChunk:
    """The chunk a piece stands for, as its model (what ``ChunkTemplate`` renders without it)."""
    return ChatCompletionChunk(
        id=id, created=created, model=model, choices=[piece.choice()], system_fingerprint=system_fingerprint
    )


class ChunkTemplate:
    """The JSON of one stream's pieces: ``render(piece)`` equals
    ``piece_chunk(piece, ...).model_dump_json(exclude=omit)`` for the same fields."""

    def __init__(self, id: str, created: int, model: str, system_fingerprint: str, omit: set[str] | None) -> None:
        self._fields = (id, created, model, system_fingerprint)
        self._omit = omit
        self._key = (model, system_fingerprint, frozenset(omit) if omit else None)
        self._id, self._created = _json_text(id), str(created)
        # This stream's cuts: a text piece's by its index alone (most chunks), others by the piece.
        self._cuts: dict[int | StreamPiece, tuple[str, ...] | None] = {}

    def render(self, piece: StreamPiece) -> str:
        text = isinstance(piece, TextPiece)
        key = piece.index if text else piece
        cut = self._cuts.get(key, _UNCUT)
        if cut is _UNCUT:
            cut = self._cuts[key] = _cut(TextPiece(piece.index, "") if text else piece, *self._key)
        if cut is None:  # no template for it: the model, as without one
            return piece_chunk(piece, *self._fields).model_dump_json(exclude=self._omit)
        if isinstance(piece, TextPiece):
            return cut[0] + self._id + cut[1] + self._created + cut[2] + _json_text(piece.text) + cut[3]
        return cut[0] + self._id + cut[1] + self._created + cut[2]


@functools.lru_cache(maxsize=1024)  # shapes x served names x fingerprints: a few per adapter version
def _cut(
    shape: StreamPiece, model: str, system_fingerprint: str, omit: frozenset[str] | None
) -> tuple[str, ...] | None:
    """The JSON of ``shape``'s chunk cut around its id, its creation time and (a text piece's) its
    text; None where a stand-in is not found exactly once, in order."""
    marked = shape if not isinstance(shape, TextPiece) else TextPiece(shape.index, _TEXT)
    document = piece_chunk(marked, _ID, _CREATED, model, system_fingerprint).model_dump_json(
        exclude=set(omit) if omit else None
    )
    marks = [_json_text(_ID), str(_CREATED)] + ([_json_text(_TEXT)] if isinstance(shape, TextPiece) else [])
    if any(document.count(mark) != 1 for mark in marks):
        return None
    parts, rest = [], document
    for mark in marks:
        before, found, rest = rest.partition(mark)
        if not found:  # out of order
            return None
        parts.append(before)
    return (*parts, rest)


def _json_text(text: str) -> str:
    """``text`` as a JSON string, as pydantic writes it; text UTF-8 cannot hold (a lone surrogate
    an upstream sent escaped) is written as ``\\u`` escapes instead of failing the stream."""
    try:
        return pydantic_core.to_json(text).decode()
    except ValueError:
        return json.dumps(text)
