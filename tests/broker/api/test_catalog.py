"""What clients ask before they chat: /api/version, /api/show and /v1/models/{id}."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import openai
import pytest

from broker.accounts.store import database_url
from broker.api.endpoints import OLLAMA_VERSION
from tests.broker.accounts.test_accounts import store_key
from tests.conftest import USER_KEY, MakeBroker, MakeConnector, Relay, wait_models
from tests.e2e.test_relay import AUTH, post, sdk
from tests.stub_llm import StubLLM


async def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as resp:
        return resp.status, await resp.read()


async def test_api_version_answers_the_ollama_version_without_a_key(relay: Relay) -> None:
    status, body = await get(f"{relay.broker.base_url}/api/version")
    assert status == 200
    assert json.loads(body) == {"version": OLLAMA_VERSION}
    assert relay.stub.seen == []


async def test_api_show_is_routed_by_its_model_to_the_connector(relay: Relay) -> None:
    body = {"model": "stub-model", "verbose": False}
    status, _, relayed = await post(f"{relay.broker.base_url}/api/show", body)
    assert status == 200
    assert json.loads(relayed) == {"path": "/api/show", "body": body}
    older = {"name": "stub-model"}  # the older name of the field, which Ollama still reads
    status, _, relayed = await post(f"{relay.broker.base_url}/api/show", older)
    assert status == 200 and json.loads(relayed) == {"path": "/api/show", "body": older}
    status, _, refused = await post(f"{relay.broker.base_url}/api/chat", older)
    assert status == 400  # elsewhere a body names its model in `model` only
    status, _, refused = await post(f"{relay.broker.base_url}/api/show", body, {})
    assert status == 401 and "error" in json.loads(refused)


async def test_one_model_by_id_through_the_sdk(relay: Relay) -> None:
    async with sdk(relay, max_retries=0) as client:
        model = await client.models.retrieve("stub-model")
        assert (model.id, model.object, model.owned_by) == ("stub-model", "model", "remotellm")
        with pytest.raises(openai.NotFoundError) as caught:
            await client.models.retrieve("no-such-model")
    assert caught.value.code == "model_not_found"


@pytest.mark.parametrize("model", ["org/name:tag", "hf.co/org/repo:Q4_K_M", "llama3.1:8b"])
async def test_model_ids_with_slashes_and_colons_are_found(
    stub: StubLLM, make_broker: MakeBroker, make_connector: MakeConnector, model: str
) -> None:
    stub.models = [model]
    broker = await make_broker()
    await make_connector(broker, stub.url)
    await wait_models(broker, {model})
    status, body = await get(f"{broker.base_url}/v1/models/{model}", AUTH)
    assert status == 200
    assert json.loads(body)["id"] == model


async def test_one_model_needs_a_key_and_hides_models_the_key_may_not_use(
    stub: StubLLM, make_broker: MakeBroker, make_connector: MakeConnector, tmp_path: Path
) -> None:
    broker = await make_broker(database_url=database_url(tmp_path, None))
    await make_connector(broker, stub.url)
    await wait_models(broker, {"stub-model"})
    url = f"{broker.base_url}/v1/models/stub-model"
    status, body = await get(url)
    assert status == 401
    assert json.loads(body)["error"]["code"] == "invalid_api_key"
    assert (await get(url, {"x-api-key": USER_KEY}))[0] == 200
    limited = await store_key(broker, models=["other-model"])
    status, body = await get(url, {"Authorization": f"Bearer {limited}"})
    assert status == 404
    assert json.loads(body)["error"]["code"] == "model_not_found"
