"""Constrained output stays well-formed UTF-8 (server/engine/utf8.py)."""

from __future__ import annotations

import json
import random

import pytest
import torch

from server.engine.base import GenerationRequest, OutputFormat, SamplingOptions
from server.engine.grammar import Grammars
from server.engine.logprobs import TokenBytes
from server.engine.utf8 import ACCEPT, Utf8Masks

# A hand-made vocabulary: ASCII, lead bytes, continuation bytes, a whole character, a half one.
PIECES = [b"a", b'"', b"\xed", b"\xa0", b"\x80", b"\xbf", b"\xe4\xb8", b"\xb8", b"\xf5", b"\xc0", b"\xf4", b"\x90"]
PIECES += [b"\xe4\xb8\xb8", b"\xf0\x9f\x98\x80", b"\xed\x9f\xbf", b"\xf4\x8f\xbf\xbf"]


def allowed(masks: Utf8Masks, state: int) -> set[bytes]:
    bitmask = torch.full((1, 1), -1, dtype=torch.int32)  # the grammar allows everything
    masks.restrict(bitmask, state)
    word = int(bitmask[0, 0]) & 0xFFFFFFFF
    return {PIECES[i] for i in range(len(PIECES)) if word >> i & 1}


def test_only_well_formed_continuations_are_allowed() -> None:
    masks = Utf8Masks(lambda i: PIECES[i], len(PIECES), len(PIECES))
    start = allowed(masks, ACCEPT)
    assert {
        b"a",
        b"\xed",
        b"\xe4\xb8",
        b"\xe4\xb8\xb8",
        b"\xf0\x9f\x98\x80",
        b"\xed\x9f\xbf",
        b"\xf4\x8f\xbf\xbf",
    } <= start
    assert not {b"\xa0", b"\x80", b"\xf5", b"\xc0", b"\xb8"} & start  # no stray continuation or invalid lead
    after_ed = masks.step(ACCEPT, PIECES.index(b"\xed"))
    assert b"\x80" in allowed(masks, after_ed) and b"\xa0" not in allowed(masks, after_ed)  # no surrogates
    after_f4 = masks.step(ACCEPT, PIECES.index(b"\xf4"))
    assert b"\x80" in allowed(masks, after_f4) and b"\x90" not in allowed(masks, after_f4)  # nothing past U+10FFFF
    half = masks.step(ACCEPT, PIECES.index(b"\xe4\xb8"))
    assert allowed(masks, half) == {b"\x80", b"\xbf", b"\xb8", b"\xa0", b"\x90"}
    assert masks.step(half, PIECES.index(b"\xb8")) == ACCEPT


def test_any_walk_the_masks_allow_decodes_strictly() -> None:
    masks = Utf8Masks(lambda i: PIECES[i], len(PIECES), len(PIECES))
    rng, state, out = random.Random(7), ACCEPT, b""
    for _ in range(3000):
        piece = rng.choice(sorted(allowed(masks, state)))
        out, state = out + piece, masks.step(state, PIECES.index(piece))
    while state != ACCEPT:  # finish the last character
        piece = b"\x80" if b"\x80" in allowed(masks, state) else b"\x90"
        out, state = out + piece, masks.step(state, PIECES.index(piece))
    out.decode("utf-8")  # strict: raises on any ill-formed sequence


def test_a_bitmask_the_strict_rule_would_empty_is_left_to_the_grammar() -> None:
    masks = Utf8Masks(lambda i: PIECES[i], len(PIECES), len(PIECES))
    only_stray = torch.tensor([[1 << PIECES.index(b"\xa0")]], dtype=torch.int32)
    masks.restrict(only_stray, ACCEPT)
    assert int(only_stray[0, 0]) == 1 << PIECES.index(b"\xa0")


@pytest.fixture(scope="module")
def grammars(base_model):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    return Grammars(tokenizer, len(tokenizer), [tokenizer.eos_token_id])


def test_a_bounded_string_counts_characters_as_json_readers_do(grammars, base_model) -> None:  # type: ignore[no-untyped-def]
    """Decoding that prefers surrogate bytes (which xgrammar alone lets through as one character)
    still yields a string within its maxLength once decoded: the CI failure of a random model."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    table = TokenBytes(tokenizer)
    schema = {"type": "object", "properties": {"id": {"type": "string", "maxLength": 4}}, "required": ["id"]}
    compiled = grammars.compile(
        GenerationRequest(
            "r",
            ({"role": "user", "content": "hi"},),
            SamplingOptions(),
            output_format=OutputFormat("json_schema", schema),
        )
    )
    preference = torch.zeros(len(tokenizer))
    for token in range(len(tokenizer)):
        raw = table.of(token)
        if raw[:1] == b"\xed" or raw[:1] in {bytes([b]) for b in range(0xA0, 0xC0)}:
            preference[token] = 10.0  # surrogates first, whenever the grammar lets them through
        elif raw == b'"':
            preference[token] = -5.0  # and close the string as late as possible
    matcher, bitmask, state, out = grammars.matcher(compiled), grammars.new_bitmask(), ACCEPT, b""
    for _ in range(60):
        if matcher.is_terminated():
            break
        logits = preference.clone()
        grammars.mask(matcher, bitmask, logits, state)
        token = int(torch.argmax(logits))
        if token == tokenizer.eos_token_id:
            assert matcher.accept_token(token)
            break
        assert matcher.accept_token(token)
        state, out = grammars.utf8.step(state, token), out + table.of(token)
    value = json.loads(out.decode("utf-8"))["id"]  # strict decoding: well-formed throughout
    assert len(value) <= 4, value
