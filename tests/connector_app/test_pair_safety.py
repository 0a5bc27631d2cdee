"""Pairing when things go wrong: a broker that blinks while someone signs in, an unencrypted or
mismatched URL, a broken connector.yaml, and env-file values a shell and systemd read back."""

from __future__ import annotations

import asyncio
import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import keyring.backends.fail
import pytest
from aiohttp import web

from broker.api.pairing import PAIRING
from connector_app.core.pairing import (
    Clock,
    Paired,
    PairingFailed,
    Sleep,
    Started,
    _slower,
    broker_base,
    checked_relay_url,
    pair_connector,
)
from connector_app.core.secrets import KeyringStore, MemoryStore
from connector_app.core.trust import client_context
from connector_app.paircli import ENV_NAME, env_line, main, save
from shared.settings import ConfigError
from tests.broker.portal.test_portal import Portal, browser, csrf_of, make_portal
from tests.conftest import MakeBroker
from tests.fake_gitlab import FakeGitLab

PROG = "remotellm-connector"


class Proxy:
    """A reverse proxy in front of the broker that fails the polls it is told to fail:
    an HTTP status, or "drop" to close the connection without an answer."""

    def __init__(self, upstream: str, host: str | None = None) -> None:
        self.upstream = upstream
        self.host = host
        self.failures: list[int | str] = []
        self.always: int | None = None
        self.polls = 0
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.forward)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        assert self.runner is not None
        await self.runner.cleanup()

    async def forward(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/pair/poll":
            self.polls += 1
            failure = self.failures.pop(0) if self.failures else self.always
            if failure == "drop":
                assert request.transport is not None
                request.transport.close()
                return web.Response()
            if isinstance(failure, int):
                return web.json_response({"error": "down"}, status=failure)
        headers = {"Host": self.host} if self.host else {}
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                request.method,
                self.upstream + request.path_qs,
                data=await request.read(),
                headers={"Content-Type": "application/json", **headers},
            ) as answer,
        ):
            return web.Response(
                status=answer.status, body=await answer.read(), content_type="application/json"
            )


@pytest.fixture
async def portal(make_broker: MakeBroker) -> AsyncIterator[Portal]:
    gitlab = FakeGitLab()
    await gitlab.start()
    yield await make_portal(make_broker, gitlab, connector_token=[])
    await gitlab.stop()


@pytest.fixture
async def proxy(portal: Portal) -> AsyncIterator[Proxy]:
    front = Proxy(portal.url)
    await front.start()
    yield front
    await front.stop()


Timing = tuple[Sleep, Clock]


@pytest.fixture
def timing(portal: Portal) -> Timing:
    """A sleep that moves one clock (the broker's and the poller's) on, and sleeps not."""
    now = [1_000_000.0]
    portal.broker.app[PAIRING].clock = lambda: now[0]

    async def passing(seconds: float) -> None:
        now[0] += seconds
        await asyncio.sleep(0.01)

    return passing, lambda: now[0]


async def decide(portal: Portal, started: Started, decision: str) -> None:
    """Sign in through fake GitLab on the broker itself and press the button."""
    async with browser() as session:
        async with session.get(f"{portal.url}/pair?code={started.user_code}") as response:
            page = await response.text()
        form = {"csrf": csrf_of(page), "code": started.user_code, "decision": decision}
        async with session.post(portal.url + "/pair/decide", data=form) as response:
            assert response.status == 200


async def paired_through(
    url: str, portal: Portal, timing: Timing, decision: str = "approve"
) -> Paired:
    seen: list[Started] = []
    sleep, clock = timing
    task = asyncio.create_task(
        pair_connector(
            url,
            "gpu-box",
            tls=client_context(None),
            on_started=seen.append,
            sleep=sleep,
            clock=clock,
        )
    )
    async with asyncio.timeout(10):
        while not seen:
            await asyncio.sleep(0.01)
    await decide(portal, seen[0], decision)
    return await task


async def test_polls_outlast_a_broker_that_blinks(
    portal: Portal, proxy: Proxy, timing: Timing
) -> None:
    proxy.failures = ["drop", 503, 502, 429, "drop"]
    paired = await paired_through(proxy.url, portal, timing)
    assert paired.token.startswith("rlc-")
    assert proxy.polls >= 6  # every failure was polled past


async def test_a_broker_down_until_the_code_expires_ends_as_expired(
    portal: Portal, proxy: Proxy, timing: Timing
) -> None:
    proxy.always = 503
    sleep, clock = timing
    with pytest.raises(PairingFailed, match="expired") as failed:
        await pair_connector(
            proxy.url,
            "gpu-box",
            tls=client_context(None),
            on_started=print,
            sleep=sleep,
            clock=clock,
        )
    assert failed.value.reason == "expired"
    assert proxy.polls > 3


async def test_a_relay_url_on_another_host_is_refused(portal: Portal, timing: Timing) -> None:
    port = portal.url.rsplit(":", 1)[1]
    front = Proxy(portal.url, host=f"elsewhere.example:{port}")
    await front.start()
    try:
        with pytest.raises(PairingFailed, match="nothing was stored") as failed:
            await paired_through(front.url, portal, timing)
    finally:
        await front.stop()
    assert failed.value.reason == "relay_mismatch"


def test_relay_urls_keep_the_brokers_host_and_encryption() -> None:
    base = "https://llm.example.com"
    assert checked_relay_url(base, "wss://llm.example.com/relay") == "wss://llm.example.com/relay"
    for weaker in (
        "ws://llm.example.com/relay",
        "wss://evil.example/relay",
        "https://llm.example.com",
    ):
        with pytest.raises(PairingFailed):
            checked_relay_url(base, weaker)
    assert checked_relay_url("http://127.0.0.1:80", "ws://127.0.0.1:80/relay")


def test_plain_http_is_only_for_this_machine_unless_insecure() -> None:
    assert broker_base("http://localhost:8080") == "http://localhost:8080"
    assert broker_base("http://[::1]:8080") == "http://[::1]:8080"
    with pytest.raises(ValueError, match="only allowed to this machine"):
        broker_base("http://llm.example.com")
    with pytest.raises(ValueError, match="only allowed to this machine"):
        broker_base("ws://192.0.2.7/relay")
    assert broker_base("http://llm.example.com", insecure=True) == "http://llm.example.com"
    with pytest.raises(ValueError, match="not a broker URL"):
        broker_base("https://[::1")


def test_the_command_refuses_http_to_another_host_and_names_insecure(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    args = ["--broker-url", "http://192.0.2.7", "--config", str(tmp_path / "connector.yaml")]
    assert main(PROG, args, secrets=MemoryStore()) == 1
    err = capsys.readouterr().err
    assert "only allowed to this machine" in err and "--insecure" in err


def test_a_broken_connector_yaml_fails_before_pairing_and_stores_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "connector.yaml"
    config.write_text("broker_url: [unclosed\n")
    secrets = MemoryStore()
    # No broker listens at port 9: had it tried to pair first, it would say "cannot reach".
    code = main(
        PROG, ["--broker-url", "http://127.0.0.1:9", "--config", str(config)], secrets=secrets
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "cannot update the configuration" in err and "nothing was stored" in err
    assert "Traceback" not in err
    assert secrets.values == {}


def test_save_reads_the_profile_before_writing_the_keyring(tmp_path: Path) -> None:
    config = tmp_path / "connector.yaml"
    config.write_text("no_such_setting: 1\n")
    secrets = MemoryStore()
    paired = Paired("rlc-secret", "wss://llm.example.com/relay", "gpu-box")
    with pytest.raises(ConfigError, match="unknown settings"):
        save(paired, config, secrets, to_file=False)
    assert secrets.values == {}
    assert config.read_text() == "no_such_setting: 1\n"


def test_without_a_keyring_save_writes_the_env_file_and_leaves_the_yaml(tmp_path: Path) -> None:
    config = tmp_path / "connector.yaml"
    config.write_text("llm_url: http://127.0.0.1:11434\n")
    paired = Paired("rlc-secret", "wss://llm.example.com/relay", "gpu-box")
    where = save(paired, config, KeyringStore(keyring.backends.fail.Keyring()), to_file=False)
    assert ENV_NAME in where
    assert config.read_text() == "llm_url: http://127.0.0.1:11434\n"
    assert (tmp_path / ENV_NAME).is_file()


ODD = 'it\'s "a" $HOME `x` \\ # end'


@pytest.mark.parametrize("value", ["rlc-abc_DEF-123", "wss://h.example:8443/relay", ODD])
def test_env_values_read_back_exactly_in_a_shell(tmp_path: Path, value: str) -> None:
    env = tmp_path / "connector.env"
    env.write_text(env_line("REMOTELLM_CONNECTOR_NAME", value) + "\n")
    shown = subprocess.run(
        ["sh", "-c", '. "$1"; printf %s "$REMOTELLM_CONNECTOR_NAME"', "sh", str(env)],
        capture_output=True,
        check=True,
        env={"HOME": "/nowhere"},
    ).stdout.decode()
    assert shown == value


def test_env_lines_are_double_quoted_as_systemd_reads_them() -> None:
    # systemd's EnvironmentFile unescapes exactly \\ \" \$ \` inside double quotes.
    assert env_line("A", ODD) == 'A="it\'s \\"a\\" \\$HOME \\`x\\` \\\\ # end"'
    assert re.fullmatch(r'B="[^"]*"', env_line("B", "rlc-x"))


@pytest.mark.parametrize(
    ("asked", "now", "then"),
    [
        (10, 5.0, 10.0),  # the broker's own, when sane
        ("12", 5.0, 12.0),
        (None, 5.0, 10.0),  # none named: 5 s more, as RFC 8628 says
        ("soon", 5.0, 10.0),  # not a number: the same, not a crash
        (3, 5.0, 10.0),  # faster is no slowing down
        (10_000, 5.0, 10.0),  # absurd
        (None, 58.0, 60.0),  # never beyond the cap
    ],
)
def test_a_slow_down_interval_from_the_broker_is_checked(
    asked: object, now: float, then: float
) -> None:
    assert _slower(asked, now) == then
