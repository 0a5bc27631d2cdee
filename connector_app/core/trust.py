"""The connector's trust decision: which certificate authorities its TLS connections believe.

Every TLS connection the connector opens (the `wss://` link to the broker, the connection
test, a local LLM server on `https://`) takes its context from here, so a frozen bundle,
which has no Python CA bundle (certifi) of its own, verifies exactly as an installed one.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import truststore

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


def client_context(ca_file: Path | None = None) -> ssl.SSLContext:
    """A client context that checks the peer's certificate and host name, TLS 1.2 or newer.

    With `ca_file`, it trusts exactly the certificates in that PEM file and nothing else:
    the operator named the private CA that issued the broker's certificate, and a broker
    on a private CA should not also be believable through any public one.

    Without, it trusts the operating system's store through `truststore`: the Keychain
    (with corporate CAs an administrator installed) on macOS, and on Linux OpenSSL's
    default verify paths, which are `SSL_CERT_FILE` and `SSL_CERT_DIR` when set. Where
    those hold nothing, as when a bundle's libssl was built for another distribution's
    layout, truststore loads the first bundle it finds among the usual places
    (/etc/ssl/certs/ca-certificates.crt, /etc/pki/tls/cert.pem, ...). On Linux it reads
    the paths at each handshake, so the environment at connection time is what counts.
    Raises `OSError` or `ssl.SSLError` when `ca_file` cannot be read as PEM certificates.
    """
    if ca_file is not None:
        context = ssl.create_default_context(cafile=str(ca_file))
    else:
        context = truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = MINIMUM_VERSION
    return context
