"""`redis_url` in its Sentinel form, as an operator writes it and as a mistake in it is told."""

from __future__ import annotations

import pytest

from shared.errors import ConfigError
from shared.redis_client import parse_sentinel_url, without_password
from shared.settings import settings_from_dict


def test_a_sentinel_url_names_the_sentinels_service_db_and_passwords() -> None:
    found = parse_sentinel_url("rediss+sentinel://:s3cr%40t@10.0.0.1:26379,[::1]:26380,"
                               "sentinel-c/payhooks/2?sentinel_password=other")
    assert found.sentinels == (("10.0.0.1", 26379), ("::1", 26380), ("sentinel-c", 26379))
    assert (found.service, found.db, found.password, found.sentinel_password, found.tls) == (
        "payhooks", 2, "s3cr@t", "other", True)
    assert parse_sentinel_url("redis+sentinel://h:1/mymaster").db == 0
    assert without_password("redis+sentinel://:s3cr3t@h:1/m/0") == "redis+sentinel://***@h:1/m/0"


@pytest.mark.parametrize(("url", "told"), [
    ("redis+sentinel://h1:26379", "ends with /<service name>/<db>"),
    ("redis+sentinel://h1:port/m/0", "a Sentinel is host:port, not 'h1:port'"),
    ("redis+sentinel://h1:26379/m/zero", "ends with /<service name>/<db>"),
])
def test_a_bad_sentinel_url_is_told_at_start(url: str, told: str) -> None:
    with pytest.raises(ConfigError, match="redis_url") as caught:
        settings_from_dict({"redis_url": url}, environ={})
    assert told in str(caught.value)
