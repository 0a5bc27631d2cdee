"""The portal's session cookie: its name, lifetime and encryption key."""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from pathlib import Path

from broker.settings import BrokerSettings

SESSION_COOKIE = "remotellm_session"
SESSION_MAX_AGE = 7 * 24 * 3600
MIN_SECRET = 16


def session_key(settings: BrokerSettings) -> bytes:
    """The Fernet key of session cookies: from --session-secret; in cluster mode, else derived
    from the cluster secret (the same on every broker); else kept in the data dir."""
    if settings.session_secret is None and settings.cluster_secret is not None:
        from broker.cluster.derivedkey import derived_key

        return derived_key(settings.cluster_secret.get_secret_value(), "portal sessions")
    if settings.session_secret is not None:
        secret = settings.session_secret.get_secret_value().encode()
        where = "--session-secret"
    else:
        path = Path(settings.data_dir) / "session-secret"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            # Written whole under a temporary name, then renamed: a crash or a second broker
            # starting at the same moment never leaves an empty (guessable) secret behind.
            temp = path.with_name(f".session-secret.{os.getpid()}.{secrets.token_hex(4)}")
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_urlsafe(48))
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, path) if not path.exists() else temp.unlink()
        secret = path.read_bytes().strip()
        where = str(path)
    if len(secret) < MIN_SECRET:
        raise ValueError(f"the session secret ({where}) must be at least {MIN_SECRET} characters")
    return base64.urlsafe_b64encode(hashlib.sha256(secret).digest())
