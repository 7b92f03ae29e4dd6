"""``TextTemplate`` renders a text-only chunk byte for byte as pydantic dumps its model."""

from __future__ import annotations

import pytest

from server.openai.text_chunks import TextPiece, TextTemplate

TEXTS = [
    "Your order ships within 3 days.",
    "",
    ' "quoted" and \\back\\slashed\\ ',
    "\x00\x01\x1f\x7f \t\n\r\b\f",
    "您好，订单已发货 😀 é \u2028\u2029",
    '</script><!-- {"content": 1} -->',
    "\u0000lora-gateway-text\u0000",  # the template's own mark, as text
]


@pytest.mark.parametrize("omit", [None, {"usage"}])
@pytest.mark.parametrize("index", [0, 3])
def test_a_text_piece_renders_as_its_chunk_model_dumps(omit: set[str] | None, index: int) -> None:
    fields = ("chatcmpl-0123abcd", 1796680000, "shop-a", "fp_lg_shop-a_v2_0123abcd")
    template = TextTemplate(*fields, omit)
    for text in TEXTS:
        piece = TextPiece(index, text)
        assert template.render(piece) == piece.chunk(*fields).model_dump_json(exclude=omit), text


def test_fields_that_need_escaping_are_rendered_as_pydantic_does() -> None:
    fields = ('chat"cmpl\\x', 0, "模型\n", "fp")
    template = TextTemplate(*fields, None)
    piece = TextPiece(0, "hi")
    assert template.render(piece) == piece.chunk(*fields).model_dump_json()


def test_a_lone_surrogate_from_an_upstream_is_written_escaped_instead_of_failing_the_stream() -> None:
    template = TextTemplate("chatcmpl-0", 0, "shop-a", "fp", None)
    rendered = template.render(TextPiece(0, "a\ud800b"))
    assert '"content":"a\\ud800b"' in rendered
