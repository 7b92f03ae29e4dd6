"""Fixtures shared by the API tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

# Cut from OpenAI's published OpenAPI document by extract_openai_schemas.py (see its docstring).
SCHEMAS = Path(__file__).with_name("openai_schemas.json")


@pytest.fixture(scope="module")
def validate():  # type: ignore[no-untyped-def]
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    document = _nullable_to_json_schema(json.loads(SCHEMAS.read_text()))
    registry = Registry().with_resource(
        "urn:openai", Resource.from_contents(document, default_specification=DRAFT202012)
    )

    def check(instance: object, schema_name: str) -> None:
        validator = Draft202012Validator({"$ref": f"urn:openai#/components/schemas/{schema_name}"}, registry=registry)
        errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.path))
        assert not errors, f"{schema_name}: " + "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:5])

    return check


def _nullable_to_json_schema(node: object) -> object:
    """The spec still marks some fields with OpenAPI 3.0's ``nullable: true``, which JSON Schema
    ignores; rewrite each as ``anyOf: [schema, null]`` so null is accepted exactly where allowed."""
    if isinstance(node, list):
        return [_nullable_to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {k: _nullable_to_json_schema(v) for k, v in node.items()}
    if converted.pop("nullable", False) is True:
        return {"anyOf": [converted, {"type": "null"}]}
    return converted
