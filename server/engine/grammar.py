"""Constrained decoding: which grammar a request needs, as one xgrammar structural tag, and the
embedded engine's compiler and per-row matchers (xgrammar: the backend vLLM pins).

``output_tag`` is the one definition of every constraint; the embedded engine compiles it here
and the vLLM engine hands the same tag to vLLM (``SamplingParams.structured_outputs``), so both
engines constrain identically.

- ``json_object``: any JSON object. ``json_schema``: JSON valid against the schema as written
  (``strict`` or not: a schema that is given is enforced).
- tools: Qwen2.5's ``<tool_call>`` format (xgrammar's ``qwen_3`` structural tag, the same format):
  with ``auto`` the model writes text or calls; ``required`` forces one call or more and a named
  ``tool_choice`` exactly that function, with nothing else around them; every call's arguments
  follow its ``parameters`` schema. A non-strict tool whose schema xgrammar cannot compile, under
  ``auto``, is served unconstrained (as OpenAI treats non-strict schemas: a hint); everything else
  that does not compile is a 400 naming the problem.

Whitespace inside JSON is capped (``MAX_WHITESPACE``) so a model cannot spend its budget on
indentation. The embedded engine compiles off the event loop and off its worker thread (the other
rows keep decoding), on a thread of its own: never the pool the gateway's bookkeeping (feedback,
keys, adapter loads) runs on, so abandoned compiles cannot starve it. At most
``MAX_WAITING_COMPILES`` wait (then 503), a compile that has not started is dropped when its
client goes away, and one that runs past ``--grammar-timeout`` is a 400 (it finishes in the
background and is cached, so a retry is quick). The edge (``openai.schema_limits``) bounds what a
schema may hold, so a compile is short. A grammar is cached: a schema used again costs a lookup.
Constrained output is also kept well-formed UTF-8 (``utf8``), which xgrammar alone does not ensure.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidRequest, Overloaded
from .base import GenerationRequest
from .logprobs import TokenBytes
from .tool_calls import CLOSE, OPEN
from .utf8 import ACCEPT, Utf8Masks

logger = logging.getLogger(__name__)

MAX_WHITESPACE = 2
MAX_WAITING_COMPILES = 8  # grammars compiling or queued on the engine's compile thread; past it, 503
_CACHE_SIZE = 256
_LOCATION = re.compile(r"^\[[\d:]+\] \S+:\d+: ")  # xgrammar's "[17:17:28] /project/cpp/x.cc:4944: " prefix


def output_tag(request: GenerationRequest) -> Any | None:
    """The xgrammar ``StructuralTag`` constraining ``request``'s output, or None when unconstrained."""
    import xgrammar as xgr
    from xgrammar import structural_tag as st

    fmt, tools = request.output_format, request.tools
    if fmt is not None:
        schema = _bounded_strings_as_patterns(fmt.schema) if fmt.type == "json_schema" else {"type": "object"}
        return xgr.StructuralTag(format=st.JSONSchemaFormat(json_schema=schema, max_whitespace_cnt=MAX_WHITESPACE))
    if tools is None or not tools.calls_allowed:
        return None
    offered: list[Any] = [_with_parameters(t) for t in tools.tools]
    if tools.choice == "auto" and not tools.named:
        return xgr.get_model_structural_tag(
            "qwen_3",
            tools=offered,
            tool_choice="auto",
            reasoning="disabled",
            parallel_tool_calls=tools.parallel,
            max_whitespace_cnt=MAX_WHITESPACE,
        )
    wanted = [t for t in offered if not tools.named or t["function"]["name"] == tools.choice]
    tags = [
        st.TagFormat(
            begin=f'{OPEN}\n{{"name": {json.dumps(t["function"]["name"])}, "arguments": ',
            content=st.JSONSchemaFormat(json_schema=t["function"]["parameters"], max_whitespace_cnt=MAX_WHITESPACE),
            end=f"}}\n{CLOSE}",
        )
        for t in wanted
    ]
    calls = st.TagsWithSeparatorFormat(
        tags=tags, separator="\n", at_least_one=True, stop_after_first=tools.named or not tools.parallel
    )
    return xgr.StructuralTag(format=calls)


def refusal(request: GenerationRequest, exc: BaseException) -> InvalidRequest | None:
    """The 400 for a grammar that does not compile, or None when the request may run unconstrained."""
    fmt, tools = request.output_format, request.tools
    if fmt is not None:
        param = "response_format.json_schema.schema" if fmt.type == "json_schema" else "response_format"
        return InvalidRequest(f"Invalid JSON schema: {reason(exc)}", param=param)
    assert tools is not None
    strict = any(t["function"].get("strict") for t in tools.tools)
    if tools.choice == "auto" and not tools.named and not strict:
        logger.warning("tools served unconstrained (their schemas do not compile: %s)", reason(exc))
        return None
    return InvalidRequest(f"Invalid tool parameters schema: {reason(exc)}", param="tools")


def grammar_key(request: GenerationRequest) -> str | None:
    """A canonical description of the grammar ``request`` needs, or None when it needs none."""
    fmt, tools = request.output_format, request.tools
    if fmt is not None:
        return json.dumps({"format": fmt.type, "schema": fmt.schema}, sort_keys=True)
    if tools is not None and tools.calls_allowed:
        spec = {"tools": list(tools.tools), "choice": tools.openai_choice(), "parallel": tools.parallel}
        return json.dumps(spec, sort_keys=True)
    return None


@dataclass(frozen=True)
class _Hit:
    compiled: Any  # None: a grammar that does not compile, served unconstrained


class Grammars:
    """The embedded engine's compiler (one tokenizer), its cache, and per-row matchers."""

    def __init__(
        self,
        tokenizer: Any,
        vocab_size: int,
        stop_ids: list[int],
        token_bytes: TokenBytes | None = None,
        *,
        timeout: float = 10.0,
    ) -> None:
        import xgrammar as xgr

        self.timeout = timeout
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grammar-compile")
        self._in_flight = 0  # submitted and not finished (running, queued, or cancelled but running)
        self._counting = threading.Lock()
        self._xgr = xgr
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=stop_ids)
        self._compiler = xgr.GrammarCompiler(info, max_threads=1)
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.vocab_size = vocab_size
        token_bytes = token_bytes or TokenBytes(tokenizer)
        self.utf8 = Utf8Masks(token_bytes.uncached, len(tokenizer), vocab_size)

    async def compiled(self, request: GenerationRequest) -> Any | None:
        """The compiled grammar for ``request`` (None: unconstrained), compiled on the compile
        thread; cancelling the caller (its client went away) drops a compile not yet started."""
        key = grammar_key(request)
        if key is None:
            return None
        if (hit := self._cached(key)) is not None:
            return hit.compiled
        with self._counting:
            if self._in_flight >= MAX_WAITING_COMPILES:
                raise Overloaded(
                    f"{MAX_WAITING_COMPILES} JSON schemas or tool sets are being compiled; retry shortly.",
                    retry_after=1,
                )
            self._in_flight += 1
        future: Future[Any] = self._executor.submit(self.compile, request)
        future.add_done_callback(self._finished)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout)
        except TimeoutError:
            param = "response_format.json_schema.schema" if request.output_format is not None else "tools"
            raise InvalidRequest(
                f"The grammar for this request did not compile within {self.timeout:g} s; simplify the schema.",
                param=param,
                code="grammar_too_complex",
            ) from None

    def _cached(self, key: str) -> _Hit | None:
        """The cache's entry for ``key`` (its grammar may be None: served unconstrained), or None."""
        with self._lock:
            if key not in self._cache:
                return None
            self._cache.move_to_end(key)
            return _Hit(self._cache[key])

    def _finished(self, _: Future[Any]) -> None:
        with self._counting:
            self._in_flight -= 1

    def close(self) -> None:
        """Drop queued compiles; a running one ends on its own (the edge keeps it short)."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    def compile(self, request: GenerationRequest) -> Any | None:
        """The compiled grammar for ``request`` (None: unconstrained). Blocking: ``compiled`` runs
        it on the compile thread."""
        key = grammar_key(request)
        if key is None:
            return None
        if (hit := self._cached(key)) is not None:
            return hit.compiled
        tag = output_tag(request)
        assert tag is not None  # a request with a grammar key has a tag
        try:
            compiled = self._compiler.compile_structural_tag(tag)
        except Exception as exc:
            error = refusal(request, exc)
            if error is not None:
                raise error from None
            compiled = None
        if compiled is not None:
            self.utf8.build()
        with self._lock:
            self._cache[key] = compiled
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return compiled

    def matcher(self, compiled: Any) -> Any:
        return self._xgr.GrammarMatcher(compiled)

    def new_bitmask(self) -> Any:
        return self._xgr.allocate_token_bitmask(1, self.vocab_size)

    def mask(self, matcher: Any, bitmask: Any, logits: Any, utf8_state: int = ACCEPT) -> None:
        """Forbid, in ``logits`` (one row, in place), every token the grammar does not allow next,
        and every token that would make the output ill-formed UTF-8 (``utf8``)."""
        matcher.fill_next_token_bitmask(bitmask)
        self.utf8.restrict(bitmask, utf8_state)
        self._xgr.apply_token_bitmask_inplace(logits.unsqueeze(0), bitmask.to(logits.device, non_blocking=True))


_MAX_PATTERN_REPEAT = 128  # xgrammar 0.2.8 fails an internal check compiling a regex repetition above this


def _bounded_strings_as_patterns(schema: Any) -> Any:
    """xgrammar 0.2.8 lets a string with ``minLength``/``maxLength`` hold raw control characters,
    which no JSON parser accepts; the same bound written as a pattern excludes them. (Such a
    string then holds no escape sequences either: a small price for output that always parses.)
    Bounds above 128 characters do not compile as a pattern there; such a string keeps the
    character rule without the bound (README, Differences from OpenAI)."""
    if isinstance(schema, list):
        return [_bounded_strings_as_patterns(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _bounded_strings_as_patterns(value) for key, value in schema.items()}
    bounded = "minLength" in out or "maxLength" in out
    if out.get("type") == "string" and bounded and not {"pattern", "format", "enum", "const"} & set(out):
        low, high = int(out.pop("minLength", 0)), out.pop("maxLength", None)
        if max(low, int(high or 0)) > _MAX_PATTERN_REPEAT:
            # A longer bound does not compile as a repetition; the string stays parseable, and
            # max_tokens (not the grammar) bounds its length.
            out["pattern"] = '^[^\\x00-\\x1f"\\\\]*$'
        else:
            out["pattern"] = f'^[^\\x00-\\x1f"\\\\]{{{low},{"" if high is None else int(high)}}}$'
    return out


def _with_parameters(tool: dict[str, Any]) -> dict[str, Any]:
    """A function without ``parameters`` takes none: an empty object, as OpenAI reads it. Its
    bounded strings become patterns (``_bounded_strings_as_patterns``)."""
    parameters = tool["function"].get("parameters") or {"type": "object", "properties": {}}
    return {**tool, "function": {**tool["function"], "parameters": _bounded_strings_as_patterns(parameters)}}


def reason(exc: BaseException) -> str:
    """xgrammar's message without its source location."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return _LOCATION.sub("", text)
