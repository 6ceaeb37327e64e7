"""The documents keep up with the code: every configuration key is in the reference, and
no document links to a file that is not in the repository."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from shared import settings

ROOT = Path(__file__).parents[1]
SECTIONS: dict[str, type[BaseModel]] = {
    "Top level": settings.Settings,
    "`[ingress]`": settings.IngressSettings,
    "`[delivery]`": settings.DeliverySettings,
    "`[logging]`": settings.LoggingSettings,
    "`[merchants.<id>]`": settings.MerchantSettings,
    "`[[merchants.<id>.hooks]]`": settings.HookSettings,
    "Every provider section": settings.ProviderSection,
    "`[merchants.<id>.ixopay]`": settings.IxopaySettings,
    "`[merchants.<id>.ifthenpay]`": settings.IfthenpaySettings,
    "`[merchants.<id>.netaxept]`": settings.NetaxeptSettings,
    "`[merchants.<id>.payex]`": settings.PayexSettings,
}
SHARED_BY_PROVIDERS = set(settings.ProviderSection.model_fields)


def documented(text: str) -> dict[str, set[str]]:
    """The keys in each section's table of docs/configuration.md."""
    keys: dict[str, set[str]] = {}
    for part in re.split(r"^## ", text, flags=re.M)[1:]:
        title, _, body = part.partition("\n")
        keys[title.strip()] = set(re.findall(r"^\| `([a-z_]+)` \|", body, flags=re.M))
    return keys


def test_every_configuration_key_is_in_the_reference() -> None:
    keys = documented((ROOT / "docs" / "configuration.md").read_text())
    missing = []
    for title, model in SECTIONS.items():
        wanted = set(model.model_fields)
        if model is not settings.Settings and title.startswith("`[merchants.<id>."):
            wanted -= SHARED_BY_PROVIDERS  # in "Every provider section"
        if model is settings.Settings:
            wanted = {"redis_url"}  # the other top-level keys are the sections below
        missing += [f"{title}: {key}" for key in sorted(wanted - keys.get(title, set()))]
    assert missing == []


def test_documents_link_only_to_files_in_the_repository() -> None:
    broken = []
    for document in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", document.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            if not (document.parent / target).exists():
                broken.append(f"{document.name}: {target}")
        if "../shared" in document.read_text():
            broken.append(f"{document.name}: cites ../shared, outside the repository")
    assert broken == []


def test_the_example_configuration_loads_and_shows_every_section() -> None:
    example = ROOT / "payhooks.example.toml"
    names = set(re.findall(r"\$\{([A-Z_]+)\}", example.read_text()))
    environ = {name: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" for name in names}
    loaded = settings.load_settings(example, environ=environ)
    assert set(loaded.merchants["shop-eu"].providers()) == set(settings.PROVIDER_SECTIONS)
    text = example.read_text()
    for key in [*settings.IngressSettings.model_fields, *settings.DeliverySettings.model_fields,
                *settings.LoggingSettings.model_fields, *settings.ConsoleSettings.model_fields]:
        assert re.search(rf"^#? ?{key} = ", text, flags=re.M), key
