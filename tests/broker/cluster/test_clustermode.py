"""Cluster mode's settings and its Redis client: what is refused, and that it opens and closes."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from broker.settings import BrokerSettings
from tests.conftest import MEMORY_STORE, MakeBroker

SECRET = "s" * 32


def test_single_process_needs_no_cluster_settings() -> None:
    settings = BrokerSettings()
    assert not settings.cluster and settings.redis_url is None


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        ({"redis_url": "redis://127.0.0.1:6379"}, "cluster_secret"),
        ({"redis_url": "redis://127.0.0.1:6379", "cluster_secret": "short"}, "32 characters"),
        ({"redis_url": "http://127.0.0.1:6379", "cluster_secret": SECRET}, "redis://"),
        ({"cluster_secret": SECRET}, "need redis_url"),
        (
            {
                "redis_url": "redis://127.0.0.1:6379",
                "cluster_secret": SECRET,
                "internal_url": "ftp://10.0.0.5/x",
            },
            "internal_url",
        ),
    ],
)
def test_cluster_settings_are_checked(fields: dict[str, str], said: str) -> None:
    with pytest.raises(ValidationError, match=said):
        BrokerSettings(**fields)  # type: ignore[arg-type]


def test_the_redis_url_is_a_secret() -> None:
    settings = BrokerSettings(
        redis_url=SecretStr("redis://:hunter2hunter2@127.0.0.1:6379/0"),
        cluster_secret=SecretStr(SECRET),
    )
    assert "hunter2" not in repr(settings) and settings.cluster


async def test_a_cluster_broker_opens_its_redis_client(
    make_broker: MakeBroker, redis_url: str
) -> None:
    broker = await make_broker(
        database_url=MEMORY_STORE,
        redis_url=SecretStr(redis_url),
        cluster_secret=SecretStr(SECRET),
    )
    redis = broker.services.redis
    assert await redis.ping() is True
    await redis.set(b"remotellm:test", b"1")
    assert await redis.get(b"remotellm:test") == b"1"
