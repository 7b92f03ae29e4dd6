"""The base models one gateway serves, and which of them an adapter belongs to.

Teams compare bases before they settle, and a company with several product lines ends up with
adapters on more than one. Each adapter is served by the base it was trained on: the one whose
*fingerprint* its training record names (``training_metadata.json``), else the one whose names
(the id clients use, the model's path or Hub id, ``--base-model-alias``) include the base its
``adapter_config.json`` declares. An adapter that declares nothing goes to the first base (the
shape check against it is then the safety net, as with one base).

A base is known by a ``BaseModelSpec`` (names, linear shapes, fingerprint) when its config is
readable here. A base discovered on a remote upstream whose config is not (a model only the
upstream's volume holds) is known by name alone: its adapters are matched by name, their headers
checked without shapes, and the upstream's own load is the proof (vLLM checks shapes on load).

Bases are only ever added (an upstream that goes away leaves its base known: its models answer
503 until one comes back), so a version proven on a base stays proven on it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

from .base_model import BaseModelSpec, name_variants


@dataclass(frozen=True)
class ServedBase:
    id: str  # the model id clients use, and the ``parent`` of its adapters in /v1/models
    root: str  # where its files are: the --model value, or what an upstream reports
    spec: BaseModelSpec | None  # None: its config is not readable here (matched by name only)
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.spec is not None:  # the spec answers to every name of the base (validation asks it)
            object.__setattr__(self, "spec", dataclasses.replace(self.spec, names=self.names))

    @property
    def names(self) -> frozenset[str]:
        known = name_variants(self.id, (self.root, *self.aliases))
        return frozenset(known | set(self.spec.names if self.spec is not None else ()))

    @property
    def fingerprint(self) -> str | None:
        return self.spec.fingerprint if self.spec is not None else None

    def declared_by(self, declared: str | None, fingerprint: str | None) -> bool:
        """Whether an adapter declaring ``declared`` (and recording ``fingerprint``) was trained on this base."""
        if fingerprint and self.fingerprint and fingerprint == self.fingerprint:
            return True
        return bool(declared) and bool(name_variants(declared or "", ()) & self.names)


class Bases:
    """The served bases, first added first; the first is the default (an undeclared adapter's)."""

    def __init__(self, bases: list[ServedBase] | None = None) -> None:
        self._bases: dict[str, ServedBase] = {}
        for base in bases or []:
            self.add(base)

    def add(self, base: ServedBase) -> bool:
        """Add ``base`` (True), or fill in the spec of one known by name only (True), else False."""
        known = self._bases.get(base.id)
        if known is not None and (known.spec is not None or base.spec is None):
            return False
        self._bases[base.id] = base
        return True

    def replace(self, base: ServedBase) -> None:
        """Set a known base's spec (the default base's, once the engine has loaded it)."""
        self._bases[base.id] = base

    def get(self, base_id: str) -> ServedBase | None:
        return self._bases.get(base_id)

    def __iter__(self) -> Iterator[ServedBase]:
        return iter(self._bases.values())

    def __len__(self) -> int:
        return len(self._bases)

    def __contains__(self, base_id: object) -> bool:
        return base_id in self._bases

    @property
    def ids(self) -> list[str]:
        return list(self._bases)

    @property
    def default(self) -> ServedBase | None:
        return next(iter(self._bases.values()), None)

    def of_adapter(self, declared: str | None, fingerprint: str | None) -> ServedBase | None:
        """The base an adapter was trained on, among those served; None when none of them is it.
        A fingerprint decides first (renames and moved copies keep it), then the declared name."""
        if fingerprint:
            for base in self:
                if base.fingerprint == fingerprint:
                    return base
        if not declared or (len(self) == 1 and self.default is not None and self.default.spec is None):
            return self.default  # nothing declared, or nothing known of the one base: shapes are the safety net
        for base in self:
            if base.declared_by(declared, None):
                return base
        return None

    def describe(self) -> str:
        return ", ".join(repr(b.id) for b in self)
