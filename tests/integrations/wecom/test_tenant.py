"""A WeCom bot answers as a tenant: its key's scope, limits and usage apply (config ``key``)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import make_settings
from tests.integrations.wecom.fake_wecom import FakeWeComApi, WeComSender
from tests.integrations.wecom.test_routes import (
    APOLOGY,
    BOTS,
    CORP_ID,
    CORP_SECRET,
    post_app,
    sender,
    sends_to,
)
from tests.support import ANSWERS, QUESTION, metric_value, running_server, wait_for

# Both bots answer as tenant "acme", whose key reaches alpha only: the shop bot (alpha) answers,
# the second bot (configured with beta, outside the key's scope) apologises.
TENANT_BOTS = {
    "shop": {**BOTS["shop"], "key": "acme-bots"},
    "outside": {**BOTS["shop"], "token": "tokenOutside", "model": "beta", "key": "acme-bots"},
}


@pytest.fixture(scope="module")
def live(base_model: Path, shared_adapters_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from server.app import create_app
    from server.database import open_engine
    from server.tenancy.keys import KeyStore

    where = tmp_path_factory.mktemp("wecom-tenant")
    database = f"sqlite:///{where / 'gateway.db'}"
    KeyStore(open_engine(database)).create("acme-bots", tenant="acme", models=("alpha",))
    api = FakeWeComApi(corp_id=CORP_ID, corp_secret=CORP_SECRET)
    with running_server(api.app()) as api_url:
        config = where / "wecom.yaml"
        config.write_text(yaml.safe_dump({"api_base": api_url, "bots": TENANT_BOTS}, allow_unicode=True))
        settings = make_settings(base_model, shared_adapters_dir, wecom_config=config, database=database)
        with running_server(create_app(settings)) as url:
            yield url, api  # type: ignore[misc]


def test_a_bot_answers_within_its_tenants_scope_and_is_counted(live) -> None:  # type: ignore[no-untyped-def]
    url, api = live
    who = f"user-{uuid.uuid4().hex[:8]}"
    assert post_app(url, "shop", *sender("shop").app_message(CORP_ID, who, QUESTION, msg_id="93001")).status_code == 200
    wait_for(lambda: sends_to(api, who) == [ANSWERS["alpha"]], timeout=60)
    text = httpx.get(f"{url}/metrics").text
    assert metric_value(text, "lora_gateway_tenant_requests_total", tenant="acme", outcome="ok") == 1


def test_a_bot_outside_its_tenants_scope_apologises(live) -> None:  # type: ignore[no-untyped-def]
    url, api = live
    who = f"user-{uuid.uuid4().hex[:8]}"
    config = TENANT_BOTS["outside"]
    outside = WeComSender(config["token"], config["encoding_aes_key"], CORP_ID)
    message = outside.app_message(CORP_ID, who, QUESTION, msg_id="93002")
    assert post_app(url, "outside", *message).status_code == 200
    wait_for(lambda: sends_to(api, who) == [APOLOGY], timeout=60)
