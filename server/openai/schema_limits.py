"""Bounds on the JSON schemas a request brings (``response_format``, ``tools``), checked at the edge.

A schema becomes a grammar that is compiled before the first token, on the request path: an
unbounded one (a 20,000-value enum, a schema nested 250 deep) costs minutes of CPU, or a
``RecursionError`` deep in the compiler. These are OpenAI's structured-output limits, in spirit
(their 10 levels and 1,000 enum values are for strict schemas; ours hold for every schema), plus
the keyword checks a compiler assumes: a length bound is a whole number, every number is finite.
"""

from __future__ import annotations

import json
import math
from typing import Any

from ..errors import InvalidRequest

MAX_SCHEMA_DEPTH = 32  # nested objects and arrays within one schema
MAX_ENUM_VALUES = 1_000  # enum and const values across a request's schemas
MAX_SCHEMA_CHARS = 100_000  # a request's schemas, as compact JSON
MAX_BOUND = 1_000_000  # a length or count keyword's largest value
_COUNTS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties")


def check_schemas(schemas: list[tuple[str, Any]]) -> None:
    """Refuse, with a 400 naming the field, the first of ``(param, schema)`` out of bounds."""
    chars = enum_values = 0
    for param, schema in schemas:
        stack: list[tuple[Any, int, str]] = [(schema, 1, param)]
        while stack:
            node, depth, where = stack.pop()
            if depth > MAX_SCHEMA_DEPTH * 2:  # a schema level is an object holding an object or a list
                raise InvalidRequest(f"{param} is nested more than {MAX_SCHEMA_DEPTH} levels deep.", param=param)
            if isinstance(node, dict):
                for keyword in _COUNTS:
                    if keyword in node:
                        _check_count(node[keyword], f"{where}.{keyword}")
                values = node.get("enum")
                enum_values += len(values) if isinstance(values, list) else 0
                enum_values += "const" in node
                stack.extend((value, depth + 1, f"{where}.{key}") for key, value in node.items())
            elif isinstance(node, list):
                stack.extend((value, depth + 1, f"{where}.[{i}]") for i, value in enumerate(node))
            elif isinstance(node, float) and not math.isfinite(node):
                raise InvalidRequest(f"{where} must be a finite number, not {node}.", param=where)
        if enum_values > MAX_ENUM_VALUES:
            raise InvalidRequest(
                f"{param}: a request's schemas may hold at most {MAX_ENUM_VALUES} enum and const values.",
                param=param,
            )
        chars += len(json.dumps(schema, separators=(",", ":"), ensure_ascii=False))
        if chars > MAX_SCHEMA_CHARS:
            raise InvalidRequest(
                f"{param}: a request's schemas may be at most {MAX_SCHEMA_CHARS} characters of JSON.", param=param
            )


def _check_count(value: object, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_BOUND:
        raise InvalidRequest(f"{where} must be a whole number from 0 to {MAX_BOUND}, not {value!r}.", param=where)
