"""The optional third path: a LiteLLM proxy in its own virtualenv, pointing at the stub.

LiteLLM is not a project dependency. It is installed on first use into
bench/.venv-litellm (git-ignored) with `uv venv` and `uv pip install
'litellm[proxy]'` (the newest release then; the version that ran is in the results'
`machine.litellm`), and run with one worker on 127.0.0.1, no database (the
environment's database variables, `DATABASE_ENV`, are not passed on) and no callbacks
(success, failure and logging callbacks stated as none in its config, LiteLLM's
default). Any failure is reported as `Unavailable` with the reason; the harness then
skips the path.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp

from bench.client import Target, chat_body, wait_until
from bench.procs import MODEL, USER_KEY, Child, Children

VENV = Path(__file__).resolve().parent / ".venv-litellm"
INSTALL_TIMEOUT = 900
START_TIMEOUT = 120.0
DATABASE_ENV = (
    "DATABASE_URL",
    "DIRECT_URL",
    "DATABASE_HOST",
    "DATABASE_USERNAME",
    "DATABASE_PASSWORD",
    "DATABASE_NAME",
)
"""Not passed on to the proxy: with any of them set, LiteLLM would use a database (it builds
`DATABASE_URL` from the host, user and name when they are set)."""


class Unavailable(Exception):
    """LiteLLM could not be installed or started; the message says why."""


def _run(argv: list[str]) -> None:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Unavailable(f"{argv[0]} {argv[1]} failed: {exc}") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise Unavailable(f"`{' '.join(argv[1:4])} ...` failed: {' / '.join(tail)}")


def ensure_installed() -> Path:
    """The `litellm` executable, installing it into bench/.venv-litellm if needed."""
    exe = VENV / "bin" / "litellm"
    if exe.exists():
        return exe
    uv = shutil.which("uv")
    if uv is None:
        raise Unavailable("uv is not on PATH, so LiteLLM cannot be installed")
    print(f"installing LiteLLM into {VENV} (first run only) ...", file=sys.stderr, flush=True)
    _run([uv, "venv", "-q", "--python", sys.executable, str(VENV)])
    _run([uv, "pip", "install", "-q", "--python", str(VENV / "bin" / "python"), "litellm[proxy]"])
    if not exe.exists():
        raise Unavailable(f"the install finished but {exe} is missing")
    return exe


def version() -> str | None:
    """The version of LiteLLM installed in bench/.venv-litellm, or None if there is none."""
    found = sorted(VENV.glob("lib/python*/site-packages/litellm-*.dist-info"))
    return found[-1].name.removeprefix("litellm-").removesuffix(".dist-info") if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _config(stub_port: int) -> str:
    return (
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: http://127.0.0.1:{stub_port}/v1\n"
        "      api_key: bench-not-a-key\n"
        # Authenticated like the broker: the same key, checked against the master key.
        "general_settings:\n"
        f"  master_key: {USER_KEY}\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
        "  drop_params: true\n"
        # No callbacks (LiteLLM's default, stated so a changed default cannot add any).
        "  callbacks: []\n"
        "  success_callback: []\n"
        "  failure_callback: []\n"
    )


async def start(children: Children, stub_port: int) -> tuple[Child, Target]:
    """Install if needed, start the proxy, check that it relays both kinds of request."""
    exe = ensure_installed()
    port = _free_port()
    config = children.log_dir / "litellm.yaml"
    config.write_text(_config(stub_port))
    argv = [str(exe), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    child = children.start(
        "litellm",
        [*argv, "--num_workers", "1"],
        drop=DATABASE_ENV,
        # Offline: use the bundled model cost map instead of fetching it; quiet logs.
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        LITELLM_LOG="ERROR",
        LITELLM_TELEMETRY="False",
    )
    base = f"http://127.0.0.1:{port}"

    async def live() -> bool:
        if not child.alive:
            raise Unavailable("the LiteLLM proxy exited; see " + str(child.log_path))
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session,
            session.get(base + "/health/liveliness") as resp,
        ):
            return resp.status == 200

    target = Target("litellm", base + "/v1")
    try:
        await wait_until(live, START_TIMEOUT, "the LiteLLM proxy answering /health/liveliness")
        for streamed in (False, True):
            async with target.session.post(
                target.url, data=chat_body("bench events=2 size=512", stream=streamed)
            ) as resp:
                body = await resp.read()
                if resp.status != 200 or (streamed and b"@1:" not in body):
                    raise Unavailable(
                        f"LiteLLM answered a test request with {resp.status}: {body[:200]!r}"
                    )
    except (Unavailable, RuntimeError, aiohttp.ClientError, OSError) as exc:
        await target.close()
        child.stop()
        raise Unavailable(str(exc)) from None
    return child, target
