"""An adapter's profile: ``profile.json`` beside its weights, with the defaults its requests get.

A shop's adapter knows how it should be asked: its system prompt, its sampling, its chat template,
its tools or output format. vLLM sets such defaults once per server and LoRAX only a template per
adapter; here each adapter version carries its own, validated at registration like its weights (a
bad profile refuses the version, with a reason), copied and versioned with it, listed by
``/v1/adapters``, and applied by ``server.completions`` before any engine sees the request, so every
engine applies it the same way. Request fields always win:

- ``system_prompt``: prepended when the request has no system (or developer) message;
- ``temperature``, ``top_p``, ``presence_penalty``, ``frequency_penalty``, ``stop``: used when the
  request does not set them; ``max_tokens``: the completion cap when the request sets none (clamped
  to the room the prompt leaves, like the server's ``--default-max-tokens``);
- ``tools``, ``tool_choice``, ``parallel_tool_calls``: used together, when the request has no tools;
- ``response_format``: used when the request sets none (and may not call tools);
- ``chat_template``: a Jinja chat template replacing the tokenizer's for this adapter (the remote
  engine passes it on as vLLM's ``chat_template`` request field).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..jsonbounds import read_adapter_json
from ..openai.protocol import (
    MAX_TOOLS,
    ChatCompletionRequest,
    ChatCompletionTool,
    ChatMessage,
    NamedToolChoice,
    ResponseFormat,
)
from ..terms.layout import PROFILE_FILE

MAX_PROFILE_BYTES = 256 * 1024


class AdapterProfile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    system_prompt: str | None = Field(default=None, max_length=32_768)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    max_tokens: int | None = Field(default=None, ge=1)
    stop: list[str] | None = Field(default=None, max_length=4)
    chat_template: str | None = Field(default=None, max_length=131_072)
    tools: list[ChatCompletionTool] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None

    @model_validator(mode="after")
    def _consistent(self) -> AdapterProfile:
        names = {tool.function.name for tool in self.tools or ()}
        if (self.tool_choice is not None or self.parallel_tool_calls is not None) and not names:
            raise ValueError("tool_choice and parallel_tool_calls need tools")
        if isinstance(self.tool_choice, NamedToolChoice) and self.tool_choice.function.name not in names:
            raise ValueError(f"tool_choice names {self.tool_choice.function.name!r}, which is not in tools")
        if any(s == "" for s in self.stop or ()):
            raise ValueError("stop sequences must not be empty")
        if self.chat_template is not None:
            try:
                ImmutableSandboxedEnvironment().parse(self.chat_template)  # as transformers compiles it
            except TemplateError as exc:
                raise ValueError(f"chat_template is not a valid Jinja template: {exc}") from None
        return self

    def apply_to(self, body: ChatCompletionRequest) -> ChatCompletionRequest:
        """``body`` with this profile's defaults filled in where the request left them unset."""
        update: dict[str, Any] = {
            field: getattr(self, field)
            for field in ("temperature", "top_p", "presence_penalty", "frequency_penalty", "stop")
            if getattr(body, field) is None and getattr(self, field) is not None
        }
        if self.system_prompt and not any(m.role in ("system", "developer") for m in body.messages):
            update["messages"] = [ChatMessage(role="system", content=self.system_prompt), *body.messages]
        if self.tools and not body.tools:
            update.update(tools=self.tools, tool_choice=self.tool_choice, parallel_tool_calls=self.parallel_tool_calls)
        tools_callable = bool(update.get("tools", body.tools)) and update.get("tool_choice", body.tool_choice) != "none"
        if self.response_format is not None and body.response_format is None and not tools_callable:
            update["response_format"] = self.response_format
        return body.model_copy(update=update) if update else body

    def summary(self) -> dict[str, Any]:
        """What ``/v1/adapters`` shows (the template by size: it can be long)."""
        data = self.model_dump(mode="json", exclude_none=True, by_alias=True)
        if "chat_template" in data:
            data["chat_template"] = f"<{len(self.chat_template or '')} characters>"
        return data


def read_profile(adapter_dir: Path) -> AdapterProfile | None:
    """The adapter's profile, None when it has none; ``AdapterRejected`` (``bad_profile``) naming the
    problem when the file is not a valid profile."""
    return read_adapter_json(
        adapter_dir, PROFILE_FILE, AdapterProfile, max_bytes=MAX_PROFILE_BYTES, reason="bad_profile"
    )
