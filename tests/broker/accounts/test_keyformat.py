from __future__ import annotations

import re

from broker.accounts import keyformat


def test_generated_keys_are_well_formed_and_distinct() -> None:
    keys = {keyformat.generate() for _ in range(200)}
    assert len(keys) == 200
    for key in keys:
        assert re.fullmatch(r"sk-[0-9A-Za-z]{38}", key)
        assert keyformat.well_formed(key)


def test_a_typo_fails_the_checksum() -> None:
    key = keyformat.generate()
    for i in range(3, len(key)):
        replacement = "A" if key[i] != "A" else "B"
        typo = key[:i] + replacement + key[i + 1 :]
        assert not keyformat.well_formed(typo), typo
    assert not keyformat.well_formed(key[:-1])
    assert not keyformat.well_formed(key + "x")
    assert not keyformat.well_formed(key.replace("sk-", "sk_"))
    assert not keyformat.well_formed(key[:10] + "!" + key[11:])


def test_connector_tokens_have_their_own_prefix() -> None:
    token = keyformat.generate(keyformat.CONNECTOR_TOKEN_PREFIX)
    assert token.startswith("rlc-")
    assert keyformat.well_formed(token, keyformat.CONNECTOR_TOKEN_PREFIX)
    assert not keyformat.well_formed(token)  # not an API key


def test_fingerprint_and_display_prefix() -> None:
    key = keyformat.generate()
    assert keyformat.fingerprint(key) == keyformat.fingerprint(key)
    assert len(keyformat.fingerprint(key)) == 64 and key not in keyformat.fingerprint(key)
    prefix = keyformat.display_prefix(key)
    assert key.startswith(prefix) and len(prefix) == len("sk-") + keyformat.DISPLAY_LENGTH
