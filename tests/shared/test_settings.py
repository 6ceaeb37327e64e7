"""The config file: env references, overrides and errors that name the key, never a secret."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shared.errors import ConfigError
from shared.settings import load_settings, parse_duration, settings_from_dict

GOOD = """
redis_url = "redis://localhost:6379/0"

[ingress]
port = 8080
max_body_bytes = 65536

[delivery]
retry_schedule = ["5s", "5m", "30m", "2h", "5h", "10h", "10h"]
timeout = "15s"
allow_private_networks = false

[merchants.shop-eu.ixopay]
shared_secret = "${SHOP_EU_IXOPAY_SECRET}"

[merchants.shop-eu.ifthenpay]
anti_phishing_key = "${SHOP_EU_IFTHENPAY_KEY}"

[merchants.shop-eu.netaxept]
merchant_id = "12002835"
token = "${SHOP_EU_NETAXEPT_TOKEN}"
base_url = "https://epayment.nets.eu"

[merchants.shop-eu.payex]
token = "${SHOP_EU_PAYEX_TOKEN}"
base_url = "https://api.payex.com"

[[merchants.shop-eu.hooks]]
id = "orders"
url = "https://shop.example/payhooks"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
events = ["payment.*"]
"""
ENV = {
    "SHOP_EU_IXOPAY_SECRET": "ixo-secret-value",
    "SHOP_EU_IFTHENPAY_KEY": "ifthen-key-value",
    "SHOP_EU_NETAXEPT_TOKEN": "nets-token-value",
    "SHOP_EU_PAYEX_TOKEN": "payex-token-value",
}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "payhooks.toml"
    path.write_text(text)
    return path


def test_the_design_example_loads_with_secrets_from_the_environment(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, GOOD), ENV)
    merchant = settings.merchants["shop-eu"]
    assert merchant.ixopay is not None
    assert merchant.ixopay.shared_secret.get_secret_value() == "ixo-secret-value"
    assert "ixo-secret-value" not in repr(settings)
    assert settings.delivery.retry_schedule == (5, 300, 1800, 7200, 18000, 36000, 36000)
    assert settings.delivery.timeout == 15
    assert list(merchant.providers()) == ["ixopay", "ifthenpay", "netaxept", "payex"]
    assert merchant.hooks[0].events == ("payment.*",)


def test_payhooks_config_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    assert load_settings(None, {**ENV, "PAYHOOKS_CONFIG": str(path)}).merchants


def test_payhooks_redis_url_overrides_the_file(tmp_path: Path) -> None:
    env = {**ENV, "PAYHOOKS_REDIS_URL": "redis://redis:6379/2"}
    assert load_settings(write(tmp_path, GOOD), env).redis_url == "redis://redis:6379/2"


def test_a_missing_environment_variable_is_named_with_its_key(tmp_path: Path) -> None:
    env = {k: v for k, v in ENV.items() if k != "SHOP_EU_PAYEX_TOKEN"}
    with pytest.raises(ConfigError) as error:
        load_settings(write(tmp_path, GOOD), env)
    assert "merchants.shop-eu.payex.token" in str(error.value)
    assert "SHOP_EU_PAYEX_TOKEN" in str(error.value)


BROKEN = [
    ('[merchants.shop-eu.ixopay]\nshared_secrett = "abc"\nshared_secret = "x"',
     "merchants.shop-eu.ixopay.shared_secrett: unknown key"),
    ("[merchants.shop-eu.netaxept]\ntoken = \"t\"",
     "merchants.shop-eu.netaxept.merchant_id: required key is missing"),
    ("[merchants.Shop_EU.payex]\ntoken = \"t\"", "merchants.Shop_EU"),
    ("[ingress]\nport = 99999", "ingress.port"),
    ('[delivery]\nretry_schedule = ["5s", "soon"]', "delivery.retry_schedule[1]"),
    ('[merchants.a.ifthenpay]\nanti_phishing_key = "short"', "merchants.a.ifthenpay"),
    ('[[merchants.a.hooks]]\nid = "h"\nurl = "https://x.example"\nsecret = "s3cr3t-not-whsec"',
     "merchants.a.hooks[0].secret"),
    ('[merchants.a.payex]\ntoken = "t"\nallowed_ips = ["not-an-ip"]', "merchants.a.payex"),
    ('[merchants.a.netaxept]\nmerchant_id = "1"\ntoken = "t"\ncallback_username = "u"',
     "callback_username and callback_password go together"),
    ('redis_url = "http://localhost"', "redis_url"),
    ("this is = not toml =", "not valid TOML"),
    ('[merchants.a.ifthenpay]\nanti_phishing_key = "long-enough-key"\nplugin = "shopify"',
     "merchants.a.ifthenpay.plugin"),
    ('[merchants.a.ifthenpay]\nanti_phishing_key = "long-enough-key"\n'
     'parameters = { k = "key", v = "value" }', "merchants.a.ifthenpay.parameters.v"),
    ('[merchants.a.ifthenpay]\nanti_phishing_key = "long-enough-key"\n'
     'parameters = { k = "key", o = "order_id" }', "no parameter means amount"),
    ('[merchants.a.ifthenpay]\nanti_phishing_key = "long-enough-key"\n'
     'parameters = { k = "key", v = "amount" }', "no parameter means order_id"),
    ('[merchants.a.ifthenpay]\nanti_phishing_key = "long-enough-key"\nplugin = "odoo"\n'
     'parameters = { k = "key", v = "amount", o = "order_id" }', "plugin or parameters"),
    ('[merchants.a.ixopay]\nshared_secret = "s"\norder_id_pattern = "(?P<id>[0-9]+)"',
     "needs a group named order"),
    ('[merchants.a.ixopay]\nshared_secret = "s"\norder_id_pattern = "(?P<order>[0-9"',
     "merchants.a.ixopay.order_id_pattern"),
]


@pytest.mark.parametrize(("text", "expected"), BROKEN)
def test_a_broken_file_names_the_key_and_the_problem(
    tmp_path: Path, text: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(write(tmp_path, text), {})
    assert expected in str(error.value)


@pytest.mark.parametrize(
    "text",
    [
        '[merchants.a.ifthenpay]\nanti_phishing_key = "short"',
        '[[merchants.a.hooks]]\nid = "h"\nurl = "https://x.example"\nsecret = "short"',
        '[merchants.a.ixopay]\nshared_secret = ["short"]',
        '[merchants.a.netaxept]\nmerchant_id = "1"\ntoken = "short"\ncallback_username = "u"',
    ],
)
def test_error_messages_never_contain_the_secret(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(write(tmp_path, text), {})
    assert "short" not in str(error.value)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_settings(tmp_path / "absent.toml", {})


@pytest.mark.parametrize(
    ("text", "seconds"), [("5s", 5), ("5m", 300), ("2h", 7200), ("1d", 86400), ("250ms", 0.25),
                          (30, 30), ("1.5h", 5400)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_ingress_read_timeout_defaults_to_ten_seconds_and_takes_a_duration(
    tmp_path: Path,
) -> None:
    assert load_settings(write(tmp_path, GOOD), ENV).ingress.read_timeout == 10
    text = GOOD.replace("max_body_bytes = 65536", 'max_body_bytes = 65536\nread_timeout = "1s"')
    assert load_settings(write(tmp_path, text), ENV).ingress.read_timeout == 1
    text = GOOD.replace("max_body_bytes = 65536", 'max_body_bytes = 65536\nread_timeout = "250ms"')
    assert load_settings(write(tmp_path, text), ENV).ingress.read_timeout == 0.25


@pytest.mark.parametrize("value", ['"0s"', "0", '"soon"', "-1", "true"])
def test_ingress_read_timeout_must_be_a_positive_duration(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match=r"ingress\.read_timeout"):
        load_settings(write(tmp_path, f"[ingress]\nread_timeout = {value}\n"), {})


def test_every_provider_has_a_merchant_section_of_its_name() -> None:
    from shared.providers import PROVIDERS
    from shared.settings import PROVIDER_SECTIONS, MerchantSettings

    assert tuple(PROVIDERS) == PROVIDER_SECTIONS
    assert set(PROVIDER_SECTIONS) <= set(MerchantSettings.model_fields)


def test_every_problem_of_a_file_is_told_in_one_run() -> None:
    """Unset variables and schema errors together, in plain words, each naming its key:
    before, one unset variable per run, and the schema's errors only once all were set."""
    raw = {"redis_url": "http://localhost", "logging": {"level": "loud"},
           "merchants": {"shop-eu": {
               "netaxept": {"merchant_id": "1", "token": "${NX_TOKEN}", "base_url": "/x"},
               "payex": {"token": "${PX_TOKEN}"}}}}
    with pytest.raises(ConfigError) as raised:
        settings_from_dict(raw, environ={})
    assert str(raised.value).splitlines() == [
        "config: merchants.shop-eu.netaxept.token: environment variable NX_TOKEN is not set",
        "config: merchants.shop-eu.payex.token: environment variable PX_TOKEN is not set",
        "config: redis_url: expected a URL that starts with redis://, rediss://, unix:// or "
        "redis+sentinel:// (rediss+sentinel://)",
        "config: logging.level: expected one of 'debug', 'info', 'warning' or 'error'",
        "config: merchants.shop-eu.netaxept.base_url: not a URL: expected http://host/... or "
        "https://host/...",
    ]


@pytest.mark.parametrize(("raw", "message"), [
    ({"merchants": {"shop-eu": {"netaxcept": {}}}},
     "merchants.shop-eu.netaxcept: unknown key; the keys here are: console_tokens, hooks, "
     "ifthenpay, ixopay, netaxept, payex"),
    ({"delivery": {"timout": "5s"}},
     "delivery.timout: unknown key; the keys here are: allow_private_networks, history, "
     "max_in_flight_per_hook, pause_after, retry_schedule, timeout"),
    ({"merchants": {"Shop_EU": {}}},
     "merchants.Shop_EU (the name): an id may hold only a-z, 0-9 and '-', 1 to 64 characters"),
])
def test_a_misspelt_key_is_told_with_the_keys_that_exist(raw: dict[str, Any],
                                                         message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        settings_from_dict(raw, environ={})
    assert str(raised.value) == f"config: {message}"


@pytest.mark.parametrize("pattern", ["payments.*", "payment.capture", "captured", ""])
def test_a_hook_filter_that_matches_no_event_type_is_refused(pattern: str) -> None:
    hook = {"id": "orders", "url": "https://shop.example/hook", "events": [pattern],
            "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}
    with pytest.raises(ConfigError, match=r"hooks\[0\]\.events: .* matches no event type"):
        settings_from_dict({"merchants": {"shop-eu": {"hooks": [hook]}}}, environ={})
    for fine in ("payment.*", "payment.captured", "*", "payment.charge*"):
        settings_from_dict({"merchants": {"shop-eu": {"hooks": [{**hook, "events": [fine]}]}}},
                           environ={})
