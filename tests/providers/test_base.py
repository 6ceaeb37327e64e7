"""What a follow-up answer's status means (shared.providers.base.check_status)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.errors import ProviderRejected, ProviderUnavailable
from shared.providers.base import NOT_FOUND_GRACE, check_status

NOW = datetime.now(UTC)
LATE = NOW - timedelta(seconds=NOT_FOUND_GRACE + 60)


@pytest.mark.parametrize("status", [200, 201, 204])
def test_a_2xx_passes(status: int) -> None:
    check_status(status, "api", LATE)


@pytest.mark.parametrize("status", [301, 302, 307, 408, 409, 425])
def test_redirects_timeouts_conflicts_and_too_early_are_retried(status: int) -> None:
    with pytest.raises(ProviderUnavailable, match=f"HTTP {status}"):
        check_status(status, "api", LATE)


def test_a_404_is_retried_for_a_while_after_the_callback_then_rejected() -> None:
    with pytest.raises(ProviderUnavailable):
        check_status(404, "api", NOW)
    with pytest.raises(ProviderRejected):
        check_status(404, "api", LATE)


@pytest.mark.parametrize("status", [400, 401, 403, 405, 410, 422])
def test_other_4xx_are_permanent(status: int) -> None:
    with pytest.raises(ProviderRejected, match=f"HTTP {status}"):
        check_status(status, "api", NOW)
