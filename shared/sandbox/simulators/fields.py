"""Typed reading of the admin API's JSON bodies: each getter accepts several spellings.

The admin API takes the state model's snake_case names and, where a provider's docs use
camelCase (`merchantTransactionId`, `transactionType`), those too; the first name present
wins. A missing required field or a value of the wrong type raises `BadRequest` (HTTP 400).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any


class BadRequest(Exception):
    """The admin request cannot be used; the message says why."""


class Fields:
    def __init__(self, data: object, where: str = "body") -> None:
        if not isinstance(data, dict):
            raise BadRequest(f"{where} is not a JSON object")
        self.data: dict[str, Any] = data
        self.where = where

    def raw(self, *names: str) -> Any:
        """The first of `names` present and not null, else None."""
        for name in names:
            if self.data.get(name) is not None:
                return self.data[name]
        return None

    def _missing(self, names: tuple[str, ...]) -> BadRequest:
        return BadRequest(f"{self.where}: {names[0]} is required")

    def text(self, *names: str, default: str | None = None) -> str:
        value = self.raw(*names)
        if value is None:
            if default is None:
                raise self._missing(names)
            return default
        if not isinstance(value, str | int) or isinstance(value, bool):
            raise BadRequest(f"{self.where}: {names[0]} must be a string")
        return str(value)

    def optional_text(self, *names: str) -> str | None:
        return None if self.raw(*names) is None else self.text(*names)

    def integer(self, *names: str, default: int | None = None) -> int:
        value = self.raw(*names)
        if value is None:
            if default is None:
                raise self._missing(names)
            return default
        if not isinstance(value, int) or isinstance(value, bool):
            raise BadRequest(f"{self.where}: {names[0]} must be an integer")
        return value

    def decimal(self, *names: str, default: Decimal | None = None) -> Decimal:
        value = self.raw(*names)
        if value is None:
            if default is None:
                raise self._missing(names)
            return default
        try:
            number = None if isinstance(value, bool) else Decimal(str(value))
        except InvalidOperation:
            number = None
        if number is None or not number.is_finite():
            raise BadRequest(f"{self.where}: {names[0]} must be a number")
        return number

    def flag(self, *names: str, default: bool = False) -> bool:
        value = self.raw(*names)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise BadRequest(f"{self.where}: {names[0]} must be true or false")
        return value

    def timestamp(self, *names: str, default: datetime) -> datetime:
        value = self.raw(*names)
        if value is None:
            return default
        try:
            return datetime.fromisoformat(str(value))
        except ValueError:
            raise BadRequest(f"{self.where}: {names[0]} must be an ISO 8601 time") from None

    def nested(self, *names: str) -> Fields | None:
        value = self.raw(*names)
        return None if value is None else Fields(value, names[0])

    def items(self, *names: str) -> list[Fields]:
        value = self.raw(*names)
        if value is None:
            return []
        if not isinstance(value, list):
            raise BadRequest(f"{self.where}: {names[0]} must be a list")
        return [Fields(item, f"{names[0]}[{i}]") for i, item in enumerate(value)]
