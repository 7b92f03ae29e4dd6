"""How a request names a model: ``shop`` (whatever version serves), ``shop@3`` (version 3) or
``shop@1a2b3c4d`` (a sha256 prefix of its weights), and how an answer says who made it.

The version that answered goes out as OpenAI's ``system_fingerprint`` (``shop@3-1a2b3c4d5e6f``)
and comes back in an evaluation's cache, a feedback row or a support ticket; ``answered_by`` reads
it. One type, so the ``@`` and the ``-`` are parsed in one place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MIN_PREFIX = 6  # hex digits of a sha256 prefix, so a version number is never read as one
_HEX = re.compile(r"[0-9a-f]+")
_DECIMAL = re.compile(r"[0-9]+")  # ASCII: str.isdigit() also holds for "²", which int() refuses


@dataclass(frozen=True)
class ModelAddress:
    """A model as a request names it: an adapter (or base) name and, optionally, one version."""

    name: str
    ref: str | None = None  # a version number or a sha256 prefix, as written

    @classmethod
    def parse(cls, model: str) -> ModelAddress:
        name, at, ref = model.partition("@")
        return cls(name, ref if at else None)

    @classmethod
    def of(cls, name: str, number: int) -> ModelAddress:
        return cls(name, str(number))

    def __str__(self) -> str:
        return self.name if self.ref is None else f"{self.name}@{self.ref}"

    @property
    def number(self) -> int | None:
        """The version number the ref names; None for a plain name or a sha256 prefix."""
        if self.ref is not None and _DECIMAL.fullmatch(self.ref) and len(self.ref) < MIN_PREFIX:
            return int(self.ref)
        return None

    def matches(self, number: int, sha256: str) -> bool:
        """Whether the ref names the version ``number`` with weights ``sha256``."""
        if self.ref is None:
            return False
        if self.number is not None:
            return number == self.number
        ref = self.ref.lower()
        return len(ref) >= MIN_PREFIX and bool(_HEX.fullmatch(ref)) and sha256.startswith(ref)


def split_address(model: str) -> tuple[str, str | None]:
    """``("shop", "3")`` for ``shop@3``; ``("shop", None)`` for a plain name."""
    address = ModelAddress.parse(model)
    return address.name, address.ref


def matches(number: int, sha256: str, ref: str) -> bool:
    """Whether ``ref`` (after the ``@``) names the version ``number`` with weights ``sha256``."""
    return ModelAddress("", ref).matches(number, sha256)


def fingerprint(address: ModelAddress, sha256: str) -> str:
    """The ``system_fingerprint`` of an answer by one adapter version: ``name@N-<12 hex>``."""
    return f"{address}-{sha256[:12]}"


def answered_by(system_fingerprint: str | None) -> ModelAddress | None:
    """The version a ``system_fingerprint`` of ours names; None for the base model's."""
    if not system_fingerprint or "@" not in system_fingerprint:
        return None
    return ModelAddress.parse(system_fingerprint.rsplit("-", 1)[0])
