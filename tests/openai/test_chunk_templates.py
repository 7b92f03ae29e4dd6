"""``ChunkTemplate`` renders the role, text and finish chunks byte for byte as pydantic dumps their
models, whatever the stream's fields, and its templates are shared across streams."""

from __future__ import annotations

import pytest

from server.openai.chunk_templates import (
    ChunkTemplate,
    FinishPiece,
    RolePiece,
    StreamPiece,
    TextPiece,
    _cut,
    piece_chunk,
)

TEXTS = [
    "Your order ships within 3 days.",
    "",
    ' "quoted" and \\back\\slashed\\ ',
    "\x00\x01\x1f\x7f \t\n\r\b\f",
    "您好，订单已发货 😀 é \u2028\u2029",
    '</script><!-- {"content": 1} -->',
    "\u0000lora-gateway-text\u0000",  # the template's own marks, as text
    "\u0000lora-gateway-id\u0000 9007199254740991",
]
PIECES: list[StreamPiece] = [
    *(TextPiece(index, text) for index in (0, 3) for text in TEXTS),
    RolePiece(0),
    RolePiece(2),
    FinishPiece(0, "stop"),
    FinishPiece(1, "length"),
    FinishPiece(0, "tool_calls"),
]
STREAMS = [
    ("chatcmpl-0123abcd", 1796680000, "shop-a", "fp_lg_shop-a_v2_0123abcd"),
    ("resp_99", 0, "shop-b", "lora-gateway-0.1.0"),  # another stream: the same templates, other fields
    ('chat"cmpl\\x', 12, "模型\n", "fp"),  # fields that need escaping
    ("chatcmpl-1", 9007199254740991, "9007199254740991", "fp"),  # a stand-in's value in the fields: no template
]


@pytest.mark.parametrize("omit", [None, {"usage"}])
@pytest.mark.parametrize("fields", STREAMS)
def test_every_piece_renders_as_its_chunk_model_dumps(omit: set[str] | None, fields: tuple[str, int, str, str]) -> None:
    template = ChunkTemplate(*fields, omit)
    for piece in PIECES:
        for _ in range(2):  # cut, then from this stream's own cuts
            assert template.render(piece) == piece_chunk(piece, *fields).model_dump_json(exclude=omit), piece


def test_a_template_is_cut_once_per_shape_and_served_name_not_once_per_stream() -> None:
    _cut.cache_clear()
    for n in range(20):
        template = ChunkTemplate(f"chatcmpl-{n}", n, "shop-z", "fp_z", None)
        template.render(RolePiece(0))
        template.render(TextPiece(0, f"piece {n}"))
        template.render(TextPiece(0, "more"))
        template.render(FinishPiece(0, "stop"))
    assert _cut.cache_info().misses == 3  # role, text, finish
    assert _cut.cache_info().hits == 3 * 19


def test_a_lone_surrogate_from_an_upstream_is_written_escaped_instead_of_failing_the_stream() -> None:
    template = ChunkTemplate("chatcmpl-0", 0, "shop-a", "fp", None)
    rendered = template.render(TextPiece(0, "a\ud800b"))
    assert '"content":"a\\ud800b"' in rendered
    rendered.encode()  # goes out as UTF-8
