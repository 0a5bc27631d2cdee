"""Throwaway certificate authorities for TLS tests on loopback, and environments trusting them.

A test writes a private CA and a server certificate it issued with `write_private_ca`, serves
the chain, and has the client trust the CA either through a CA file or through the system's
trust store, which on Linux is whatever `SSL_CERT_FILE` names (`system_store_env`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest
import trustme

STORE_VARIABLES = ("SSL_CERT_FILE", "SSL_CERT_DIR")
"""What OpenSSL, and so truststore on Linux, reads for the system's trust store."""


def write_private_ca(directory: Path, *hosts: str) -> tuple[Path, Path]:
    """A fresh CA and a certificate it issued for `hosts` (127.0.0.1 and localhost by default).

    Writes `ca.pem` (the CA's certificate, a PEM bundle a client can trust) and `server.pem`
    (the server's key and certificate chain, for both `tls_cert` and `tls_key`) into
    `directory`, and returns (CA file, chain file).
    """
    ca = trustme.CA()
    server = ca.issue_cert(*(hosts or ("127.0.0.1", "localhost")))
    ca_file, chain = directory / "ca.pem", directory / "server.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server.private_key_and_cert_chain_pem.write_to_path(str(chain))
    return ca_file, chain


def system_store_env(ca_file: Path | None, base: Mapping[str, str]) -> dict[str, str]:
    """`base` with the system's trust store being `ca_file` alone, or the distribution's store.

    For a child process (a frozen bundle): with `ca_file`, `SSL_CERT_FILE` names it; with
    None, neither variable is set, so the store is the distribution's, which holds no
    test CA.
    """
    env = {k: v for k, v in base.items() if k not in STORE_VARIABLES}
    if ca_file is not None:
        env["SSL_CERT_FILE"] = str(ca_file)
    return env


def use_system_store(monkeypatch: pytest.MonkeyPatch, ca_file: Path | None) -> None:
    """`system_store_env` for this process, for the rest of the test."""
    for name in STORE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    if ca_file is not None:
        monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
