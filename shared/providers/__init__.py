"""The providers: the one list from which the ingress's routes, the merchants' provider
sections, the CLI's choices and the tests derive. Adding a provider: README, "Adding a
provider" (a module here, its settings section, its simulator, its tests)."""

from __future__ import annotations

from typing import Any, Protocol

from shared.providers.base import Provider
from shared.providers.ifthenpay import Ifthenpay
from shared.providers.ixopay import Ixopay
from shared.providers.netaxept import Netaxept
from shared.providers.payex import Payex
from shared.settings import MerchantSettings


class ProviderClass(Protocol):
    """A provider module's class: its name and method, built from its settings section."""

    @property
    def name(self) -> str: ...

    @property
    def method(self) -> str: ...

    def __call__(self, settings: Any, /) -> Provider: ...


PROVIDERS: dict[str, ProviderClass] = {
    provider.name: provider for provider in (Ixopay, Ifthenpay, Netaxept, Payex)}
NAMES = tuple(PROVIDERS)


def build_providers(merchant: MerchantSettings) -> dict[str, Provider]:
    """The providers this merchant configured, by name."""
    return {name: PROVIDERS[name](section) for name, section in merchant.providers().items()
            if section is not None}
