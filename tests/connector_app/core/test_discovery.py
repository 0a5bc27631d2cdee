"""Discovery fallbacks: the models of an Ollama server, the first local server answering."""

from __future__ import annotations

from connector_app.core.discovery import detect_local_server, discover_models
from connector_app.core.llm import LocalLLM
from tests.broker.api.test_errors import free_port
from tests.stub_llm import StubLLM


async def test_discovery_falls_back_to_ollama_tags(stub: StubLLM) -> None:
    stub.openai_models = False
    stub.models = ["llama3:8b", "qwen2.5:7b"]
    llm = LocalLLM(stub.url)
    try:
        assert await discover_models(llm) == ["llama3:8b", "qwen2.5:7b"]
    finally:
        await llm.close()


async def test_detection_finds_the_first_answering_server(stub: StubLLM) -> None:
    port = int(stub.url.rsplit(":", 1)[1])
    servers = [("Nothing here", free_port()), ("Stub", port)]
    assert await detect_local_server(servers=servers) == ("Stub", stub.url)
    assert await detect_local_server(servers=[("Nothing here", free_port())]) is None
