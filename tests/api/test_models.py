"""/v1/models lists the base and every adapter the way vLLM does."""

from __future__ import annotations

import httpx
import pytest
from openai import NotFoundError


def test_list_has_base_and_adapters_with_parent_and_root(client, gateway_url: str, shared_adapters_dir) -> None:  # type: ignore[no-untyped-def]
    models = {m.id: m for m in client.models.list()}
    assert set(models) == {"tiny-base", "alpha", "beta"}
    raw = {m["id"]: m for m in httpx.get(f"{gateway_url}/v1/models").json()["data"]}
    assert raw["tiny-base"]["parent"] is None
    for name in ("alpha", "beta"):
        assert raw[name]["parent"] == "tiny-base"
        assert raw[name]["root"] == str((shared_adapters_dir / name).resolve())
        assert raw[name]["object"] == "model" and raw[name]["owned_by"]


def test_retrieve_one_model(client) -> None:  # type: ignore[no-untyped-def]
    assert client.models.retrieve("beta").id == "beta"
    assert client.models.retrieve("tiny-base").id == "tiny-base"
    with pytest.raises(NotFoundError) as caught:
        client.models.retrieve("gamma")
    assert caught.value.body["code"] == "model_not_found"  # type: ignore[index]
