"""The four providers, built for one merchant from its config sections."""

from __future__ import annotations

from shared.providers.base import Provider
from shared.providers.ifthenpay import Ifthenpay
from shared.providers.ixopay import Ixopay
from shared.providers.netaxept import Netaxept
from shared.providers.payex import Payex
from shared.settings import MerchantSettings

NAMES = ("ixopay", "ifthenpay", "netaxept", "payex")


def build_providers(merchant: MerchantSettings) -> dict[str, Provider]:
    """The providers this merchant configured, by name."""
    providers: dict[str, Provider] = {}
    if merchant.ixopay is not None:
        providers["ixopay"] = Ixopay(merchant.ixopay)
    if merchant.ifthenpay is not None:
        providers["ifthenpay"] = Ifthenpay(merchant.ifthenpay)
    if merchant.netaxept is not None:
        providers["netaxept"] = Netaxept(merchant.netaxept)
    if merchant.payex is not None:
        providers["payex"] = Payex(merchant.payex)
    return providers
