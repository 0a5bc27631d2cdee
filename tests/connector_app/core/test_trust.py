"""Which CAs the connector believes: a CA file alone, or the system's store (Linux: SSL_CERT_FILE).

Real TLS on loopback against a server whose certificate a throwaway CA issued. Each test sets
the store variables itself, since the machine's own environment may name a bundle too.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from connector_app.core.failures import describe_failure, is_fatal
from connector_app.core.llm import LocalLLM
from connector_app.core.probe import check_local
from connector_app.core.trust import client_context
from connector_app.core.wire import open_wire
from shared import websocket as ws
from tests.connector_app.core.test_wire import TOKEN, linked, serving
from tests.stub_llm import StubLLM
from tests.tlsca import use_system_store, write_private_ca


def server_context(chain: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(chain)
    return context


@pytest.fixture
def pki(tmp_path: Path) -> tuple[Path, ssl.SSLContext]:
    """The CA file, and a server context with a certificate it issued for 127.0.0.1."""
    ca_file, chain = write_private_ca(tmp_path)
    return ca_file, server_context(chain)


def test_every_context_checks_the_certificate_and_the_host_with_tls_1_2_or_newer(
    pki: tuple[Path, ssl.SSLContext],
) -> None:
    ca_file, _ = pki
    for context in (client_context(), client_context(ca_file)):
        assert context.verify_mode is ssl.CERT_REQUIRED
        assert context.check_hostname
        assert context.minimum_version is ssl.TLSVersion.TLSv1_2


async def test_a_ca_file_is_trusted_instead_of_the_system_store(
    tmp_path: Path, pki: tuple[Path, ssl.SSLContext], monkeypatch: pytest.MonkeyPatch
) -> None:
    ca_file, server = pki
    use_system_store(monkeypatch, None)
    async with serving(context=server) as running:
        async with linked(running.url, ssl_context=client_context(ca_file)) as wire:
            wire.send(b"through the CA file")
            assert await running.next_event() == ws.Message(b"through the CA file")
        # The system's store now holds the CA, but a CA file naming another CA is all
        # that counts: a private broker is not believed through any other authority.
        use_system_store(monkeypatch, ca_file)
        other_dir = tmp_path / "other"
        other_dir.mkdir()
        other_ca, _ = write_private_ca(other_dir)
        with pytest.raises(ssl.SSLCertVerificationError):
            await open_wire(running.url, token=TOKEN, ssl_context=client_context(other_ca))


async def test_the_system_store_is_what_ssl_cert_file_names(
    pki: tuple[Path, ssl.SSLContext], monkeypatch: pytest.MonkeyPatch
) -> None:
    ca_file, server = pki
    use_system_store(monkeypatch, ca_file)
    async with serving(context=server) as running:
        # No context given: the link builds the system-store one itself.
        async with linked(running.url) as wire:
            wire.send(b"through the system store")
            assert await running.next_event() == ws.Message(b"through the system store")
        async with linked(running.url, ssl_context=client_context()) as wire:
            wire.send(b"by the connector's context")
            assert await running.next_event() == ws.Message(b"by the connector's context")


async def test_without_the_ca_the_certificate_is_refused_in_plain_words(
    pki: tuple[Path, ssl.SSLContext], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, server = pki
    use_system_store(monkeypatch, None)
    async with serving(context=server) as running:
        with pytest.raises(ssl.SSLCertVerificationError) as caught:
            await open_wire(running.url, token=TOKEN)
    assert is_fatal(caught.value)
    assert describe_failure(caught.value) == (
        "TLS handshake with the broker failed: the broker's certificate is not trusted "
        "(unable to get local issuer certificate); if a private CA issued it, add that CA "
        "to the system's trust store or point --ca-file (ca_file in connector.yaml) at it"
    )


async def test_the_system_store_checks_the_host_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca_file, chain = write_private_ca(tmp_path, "broker.example")
    use_system_store(monkeypatch, ca_file)
    async with serving(context=server_context(chain)) as running:
        with pytest.raises(ssl.SSLCertVerificationError) as caught:
            await open_wire(running.url, token=TOKEN)
    assert "mismatch" in describe_failure(caught.value)


async def test_an_https_llm_server_is_checked_against_the_system_store(
    pki: tuple[Path, ssl.SSLContext], monkeypatch: pytest.MonkeyPatch
) -> None:
    ca_file, server = pki
    stub = StubLLM(tls=server)
    await stub.start()
    try:
        assert stub.url.startswith("https://")
        use_system_store(monkeypatch, None)
        refused = await check_local(stub.url, None)
        assert not refused.ok
        assert refused.message == (
            f"The local LLM server at {stub.url} has a certificate this machine does not "
            "trust (unable to get local issuer certificate); add the CA that issued it to "
            "the system's trust store."
        )
        use_system_store(monkeypatch, ca_file)
        llm = LocalLLM(stub.url)
        try:
            listed = await llm.get_json("/v1/models", 10.0)
        finally:
            await llm.close()
        assert listed["data"][0]["id"] == "stub-model"
    finally:
        await stub.stop()


def test_a_bundled_openssl_that_looks_in_the_wrong_place_still_finds_the_system_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A frozen bundle carries the build machine's libssl, whose default paths may not exist
    on the machine it runs on (Debian's /usr/lib/ssl on Fedora): plain `ssl` then trusts
    nothing, truststore looks in the places distributions keep their bundle."""
    empty = tmp_path / "certs"
    empty.mkdir()
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "missing.pem"))
    monkeypatch.setenv("SSL_CERT_DIR", str(empty))
    assert ssl.create_default_context().cert_store_stats()["x509_ca"] == 0
    handshake = client_context().wrap_bio(
        ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="broker.example"
    )
    # SSLObject.context is the context the handshake verifies with.
    loaded = handshake.context.cert_store_stats()["x509_ca"]
    assert loaded > 0, "no CA bundle in the usual places: install the ca-certificates package"
