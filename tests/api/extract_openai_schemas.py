"""Regenerate ``openai_schemas.json``: the schemas the conformance test needs, with every schema
they reference, cut from OpenAI's published OpenAPI document (3 MB) so the test runs anywhere.

    python tests/api/extract_openai_schemas.py path/to/openai-openapi.yaml
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

ROOTS = [
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "ListModelsResponse",
    "Model",
    "ErrorResponse",
]
PREFIX = "#/components/schemas/"


def refs(node: object) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"][len(PREFIX) :]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(refs(v) for v in node))
    return set()


def main(spec: str) -> None:
    document = yaml.load(Path(spec).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    schemas = document["components"]["schemas"]
    wanted, todo = set(), list(ROOTS)
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            todo.extend(refs(schemas[name]) - wanted)
    subset = {
        "openapi": document["openapi"],
        "info": document["info"],
        "components": {"schemas": {n: schemas[n] for n in sorted(wanted)}},
    }
    out = Path(__file__).with_name("openai_schemas.json")
    out.write_text(json.dumps(subset, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(wanted)} schemas to {out}")


if __name__ == "__main__":
    main(sys.argv[1])
