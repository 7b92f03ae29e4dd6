"""OpenAI's fine-tuning API, field by field as its OpenAPI document defines it: what
``client.fine_tuning.jobs.create`` sends, and what ``client.files`` and the job objects look like.

Only supervised fine-tuning is offered; ``method.type`` ``dpo`` or ``reinforcement``, and
``integrations`` (Weights & Biases), are refused with a 400 naming the field, never ignored.
"auto" hyperparameters mean the trainer's defaults (``server.trainer.config``).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..errors import UnsupportedParameter
from ..terms.scores import Metric

SUFFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}")  # OpenAI allows up to 64; ours must fit an adapter name
FILE_ID = re.compile(r"file-[A-Za-z0-9]{1,60}")


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_epochs: Literal["auto"] | int = Field(default="auto")
    batch_size: Literal["auto"] | int = Field(default="auto")
    learning_rate_multiplier: Literal["auto"] | float = Field(default="auto")

    @field_validator("n_epochs")
    @classmethod
    def _epochs(cls, value: object) -> object:
        if value != "auto" and not (isinstance(value, int) and 1 <= value <= 1000):
            raise ValueError("n_epochs is 'auto' or a whole number from 1 to 1000")
        return value

    @field_validator("batch_size")
    @classmethod
    def _batch(cls, value: object) -> object:
        if value != "auto" and not (isinstance(value, int) and 1 <= value <= 256):
            raise ValueError("batch_size is 'auto' or a whole number from 1 to 256")
        return value

    @field_validator("learning_rate_multiplier")
    @classmethod
    def _multiplier(cls, value: object) -> object:
        if value != "auto" and not (isinstance(value, int | float) and 0 < value <= 1000):
            raise ValueError("learning_rate_multiplier is 'auto' or a number above 0, at most 1000")
        return value


class SupervisedMethod(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hyperparameters: Hyperparameters | None = None


class Method(BaseModel):
    model_config = ConfigDict(extra="allow")  # dpo / reinforcement bodies: refused by type, by name

    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: SupervisedMethod | None = None


class FineTuningJobRequest(BaseModel):
    """``POST /v1/fine_tuning/jobs``."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=256)
    training_file: str = Field(pattern=FILE_ID.pattern)
    validation_file: str | None = Field(default=None, pattern=FILE_ID.pattern)
    suffix: str | None = Field(default=None, max_length=64)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    metadata: dict[str, str] | None = None
    integrations: list[Any] | None = None
    # Ours, beyond OpenAI's fields (the SDK sends them in ``extra_body``): an uploaded file the
    # published adapter carries as its eval gate, and the gate's thresholds (``train --eval-set``).
    eval_file: str | None = Field(default=None, pattern=FILE_ID.pattern)
    eval_min: dict[Metric, float] | None = None
    eval_max_drop: dict[Metric, float] | None = None

    @field_validator("suffix")
    @classmethod
    def _suffix(cls, value: str | None) -> str | None:
        if value is not None and not SUFFIX.fullmatch(value):
            raise ValueError("suffix is 1 to 40 letters, digits, '-' and '_', starting with a letter or digit")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None and (len(value) > 16 or any(len(k) > 64 or len(v) > 512 for k, v in value.items())):
            raise ValueError("metadata holds at most 16 pairs, keys of 64 characters and values of 512")
        return value

    @model_validator(mode="after")
    def _offered(self) -> FineTuningJobRequest:
        if (self.eval_min or self.eval_max_drop) and self.eval_file is None:
            raise ValueError("eval_min and eval_max_drop are the thresholds of an eval_file's gate: give the file")
        if self.integrations:
            raise UnsupportedParameter(
                "integrations are not offered: the gateway reports to no third party.", param="integrations"
            )
        if self.method is not None and self.method.type != "supervised":
            raise UnsupportedParameter(
                f"method.type {self.method.type!r} is not offered: this gateway fine-tunes with supervised LoRA only.",
                param="method.type",
            )
        if self.hyperparameters is not None and self.method is not None and self.method.supervised is not None:
            if self.method.supervised.hyperparameters is not None:
                raise UnsupportedParameter(
                    "give hyperparameters once: in method.supervised.hyperparameters, or the deprecated "
                    "top-level field.",
                    param="hyperparameters",
                )
        return self

    @property
    def settings(self) -> Hyperparameters:
        """The hyperparameters asked for, wherever they were given."""
        if self.method is not None and self.method.supervised is not None and self.method.supervised.hyperparameters:
            return self.method.supervised.hyperparameters
        return self.hyperparameters or Hyperparameters()


JobStatus = Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]
FINISHED: tuple[str, ...] = ("succeeded", "failed", "cancelled")
