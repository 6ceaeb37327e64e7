"""The models that cross layers: the ingress's fast JSON is the Callback model's own."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from shared.models import Callback, callback_json, new_callback_id


@pytest.mark.parametrize(
    "body", [b"", b'{"a": 1}', bytes(range(256)), "ünïcödé €".encode(), b"\xff\xfe\x00"]
)
def test_the_fast_callback_json_is_byte_for_byte_the_models(body: bytes) -> None:
    fields: dict[str, Any] = {
        "id": new_callback_id(), "merchant": "shop-eu", "provider": "ixopay", "method": "POST",
        "uri": "/callbacks/shop-eu/ixopay?x=%20é", "headers": {"date": "Thu, 23 Mar 2023",
                                                              "x-signature": "a+b/c=="},
        "body": body, "source": "2001:db8::1", "reference": "ref-€",
        "received_at": datetime(2026, 11, 21, 10, 0, 0, 123456, tzinfo=UTC),
    }
    fast = callback_json(**fields)
    assert fast == Callback(**fields).model_dump_json().encode()
    assert Callback.model_validate_json(fast).body == body


def test_callback_ids_are_unique_and_sort_by_time() -> None:
    ids = [new_callback_id(now=1_700_000_000.0 + n / 1000) for n in range(2000)]
    assert len(set(ids)) == 2000
    assert ids == sorted(ids)
    assert all(len(i) == 3 + 12 + 12 + 6 for i in ids)
