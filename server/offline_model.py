"""Build a small Qwen2-architecture model and a real byte-level BPE tokenizer, offline.

The demo and the test-suite need a base model but may not download one. A random-weight Qwen2
with a ChatML template exercises exactly the code paths a real Qwen2.5 does (chat template,
special tokens, peft target modules, safetensors layout), so the same loader serves both.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

# Qwen2.5's template, tools included: tools are listed in the system turn, an assistant's calls are
# written as <tool_call> blocks and tool results as <tool_response> blocks in a user turn. The only
# change is the default system prompt ("You are a helpful assistant.", inserted when none is given
# exactly as Qwen's template inserts its own), so training and serving agree.
CHATML_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}"
    "{%- else %}{{- 'You are a helpful assistant.' }}{%- endif %}"
    '{{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n'
    'You are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}'
    '{%- for tool in tools %}{{- "\\n" }}{{- tool | tojson }}{%- endfor %}'
    '{{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments '
    'within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": '
    '<args-json-object>}\\n</tool_call><|im_end|>\\n" }}'
    "{%- else %}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
    "{%- for message in messages %}"
    '{%- if (message.role == "user") or (message.role == "system" and not loop.first) '
    'or (message.role == "assistant" and not message.tool_calls) %}'
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    '{%- elif message.role == "assistant" %}'
    "{{- '<|im_start|>' + message.role }}"
    "{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}"
    "{%- for tool_call in message.tool_calls %}"
    "{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}"
    '{{- \'\\n<tool_call>\\n{"name": "\' }}{{- tool_call.name }}{{- \'", "arguments": \' }}'
    "{{- tool_call.arguments | tojson }}{{- '}\\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    '{%- elif message.role == "tool" %}'
    "{%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' }}{{- message.content }}{{- '\\n</tool_response>' }}"
    "{%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Qwen2.5 has these as added tokens too (not special: they are part of the answer text).
TOOL_TOKENS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]
TEMPLATE_VERSION = 2  # part of the demo's cache key: a changed template rebuilds the model

# Enough text for the BPE merges to cover the words the demo and tests use; the 256-byte initial
# alphabet means any other text (Chinese included) still tokenizes, just into more pieces.
_CORPUS = [
    "You are a helpful assistant.",
    "Hello! How can I help you today?",
    "Where is my order? Your order ships within 3 days.",
    "What is the return policy? Returns are accepted within 7 days of delivery.",
    "Orders over 99 yuan ship free. Customs duties are paid by the buyer.",
    "system user assistant developer",
    "The quick brown fox jumps over the lazy dog.",
    "您好！请问有什么可以帮您？订单将在三天内发货。满99元包邮。七天无理由退货。",
    "关税由买家承担。一般三到五个工作日送达。我是客服助手。",
    "0123456789 !?.,:;'\"()[]{}<>-_=+/*&^%$#@~`|\\",
    '{"name": "get_order_status", "arguments": {"order_id": "A1001"}} {"status": "shipped"}',
    # The tools preamble of the template above: merged into few tokens, tool prompts stay short.
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    '{"type": "function", "function": {"name": "description", "parameters": {"type": "object", '
    '"properties": {"type": "string"}, "required": [], "additionalProperties": false}}}\n</tools>\n\n'
    "For each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": '
    "<args-json-object>}\n</tool_call>",
]


@dataclass(frozen=True)
class TinyModelSpec:
    """Shape of the generated model. The defaults build in well under a second."""

    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    vocab_size: int = 1024
    max_position_embeddings: int = 4096
    embedding_std: float | None = None  # None: 20 / hidden_size (see build_tiny_model)
    seed: int = 0


def build_tokenizer(vocab_size: int = 1024, extra_corpus: tuple[str, ...] = ()):  # -> PreTrainedTokenizerFast
    """A byte-level BPE tokenizer with Qwen's special tokens and ChatML template.

    ``extra_corpus``: more text to learn merges from (the demo passes its datasets, so Chinese
    answers take a few tokens per word instead of three bytes per character)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([*_CORPUS * 4, *extra_corpus], trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHATML_TEMPLATE,
    )
    tokenizer.add_tokens(TOOL_TOKENS)
    return tokenizer


def build_tiny_model(
    out_dir: str | Path, spec: TinyModelSpec = TinyModelSpec(), extra_corpus: tuple[str, ...] = ()
) -> Path:
    """Write a random Qwen2ForCausalLM and its tokenizer to ``out_dir`` and return the path."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(spec.vocab_size, extra_corpus)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(spec.seed)
    model = Qwen2ForCausalLM(config)
    # With the default init (std 0.02) the tied head's logits cannot exceed ~1, so no adapter could
    # ever make one token confident; too large and the random model is so sure of itself that
    # training starts at a loss of ~70. Logits reach about |h|*|e| = hidden * std after the final
    # norm, so std = 20 / hidden gives every width the same ~20 of headroom.
    with torch.no_grad():
        embeddings: torch.Tensor = model.get_input_embeddings().weight  # type: ignore[assignment]
        embeddings.normal_(0.0, spec.embedding_std or 20.0 / spec.hidden_size)
    model.generation_config = GenerationConfig(
        eos_token_id=[config.eos_token_id, tokenizer.pad_token_id],
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "lora_gateway_offline.json").write_text(json.dumps(_marker(spec, extra_corpus), indent=2))
    return out


def _marker(spec: TinyModelSpec, extra_corpus: tuple[str, ...]) -> dict[str, object]:
    corpus = hashlib.sha256("\n".join(extra_corpus).encode()).hexdigest()[:16]
    return {**spec.__dict__, "corpus": corpus, "template": TEMPLATE_VERSION}


def is_built(out_dir: str | Path, spec: TinyModelSpec, extra_corpus: tuple[str, ...] = ()) -> bool:
    """True when ``out_dir`` already holds a model built from ``spec`` (the demo's cache check)."""
    marker = Path(out_dir) / "lora_gateway_offline.json"
    try:
        return json.loads(marker.read_text()) == _marker(spec, extra_corpus)
    except (OSError, ValueError):
        return False
