"""A throwaway PostgreSQL cluster on loopback for tests (Debian's PostgreSQL server).

`.ci/run` installs the package. The cluster is made in a temporary directory (not under
pytest's tmp dir: that one is private to this user, and the server runs as `postgres` when
the tests run as root), listens on 127.0.0.1 on a free port, and is removed when stopped.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.redisserver import free_port


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    assert found, f"needs Debian's PostgreSQL server ({name}); .ci/run installs it"
    return found[-1]


def _as_postgres(args: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root: CI (root) runs it as the package's `postgres` user.
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@contextmanager
def running_postgres() -> Iterator[str]:
    """A running cluster with an empty database; yields its SQLAlchemy asyncpg URL."""
    base = Path(tempfile.mkdtemp(prefix="remotellm-pg-"))
    data = base / "data"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        shutil.chown(data, "postgres")
    subprocess.run(
        _as_postgres(
            [_bin("initdb"), "-D", str(data), "-U", "remotellm", "--auth=trust", "-E", "UTF8"]
        ),
        check=True,
        capture_output=True,
    )
    port = free_port()
    options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={base}"
    subprocess.run(
        _as_postgres(
            [_bin("pg_ctl"), "-D", str(data), "-o", options, "-w", "-l", str(base / "log"), "start"]
        ),
        check=True,
        capture_output=True,
    )
    try:
        subprocess.run(
            _as_postgres(
                [
                    _bin("createdb"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "-U",
                    "remotellm",
                    "remotellm",
                ]
            ),
            check=True,
            capture_output=True,
        )
        yield f"postgresql+asyncpg://remotellm@127.0.0.1:{port}/remotellm"
    finally:
        subprocess.run(
            _as_postgres([_bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
            check=False,
            capture_output=True,
        )
        shutil.rmtree(base, ignore_errors=True)
