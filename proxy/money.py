"""Exact cost sums and currency conversion for reports; amounts are rounded only for display."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Context, Decimal, localcontext

# A binary float times a power of two is exact, so int(cost * 2**100) is the cost as a whole number
# of 2**-100 units: sums of those ints are exact (math.fsum's accuracy without its per-value cost).
UNIT_BITS = 100
UNIT_SCALE = float(2**UNIT_BITS)
with localcontext() as _exact:
    _exact.prec = 80
    _UNIT = Decimal(2) ** -UNIT_BITS
# A record's cost is a float, written as the shortest decimal that reads back as it (3.5e-06), which is
# within 2**-53 of the float, relative to it. So the exact sum of costs of one sign is within 2**-53 of the
# sum of their decimals, relative to it: under a quarter of half a unit in the 15th significant digit, so
# rounding it to 15 digits gives the decimals' sum back whenever that sum has no more digits.
_AS_WRITTEN = Context(prec=15)

_SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£"}


class ExchangeError(ValueError):
    """A currency the configured exchange rates cannot convert to."""


def units_to_decimal(units: int) -> Decimal:
    """A sum of cost units as the sum of the decimals the records write, to 15 significant digits.

    Not the floats' own sum, which a report rounded for display by its last binary digits: 3.5e-06 is
    3.49999999999999994...e-06 as a float, shown as $0.000003 where the record says $0.0000035.
    """
    return _AS_WRITTEN.multiply(Decimal(units), _UNIT)


@dataclass(frozen=True)
class Exchange:
    """The reporting currency and the rates into it: 1 unit of a key = rate units of `currency`."""

    currency: str = "USD"
    rates: Mapping[str, Decimal] = field(default_factory=dict)

    def rate(self, currency: str) -> Decimal | None:
        return Decimal(1) if currency == self.currency else self.rates.get(currency)

    def convert(self, amount: Decimal, currency: str) -> Decimal | None:
        """The amount in the reporting currency, or None when there is no rate for its currency."""
        rate = self.rate(currency)
        return None if rate is None else amount * rate

    def to(self, currency: str) -> Exchange:
        """The same rates, re-based to report in another currency."""
        currency = currency.upper()
        if currency == self.currency:
            return self
        pivot = self.rates.get(currency)
        if pivot is None:
            known = ", ".join(sorted({self.currency, *self.rates}))
            raise ExchangeError(
                f"--currency {currency}: no exchange rate for it in the config; use one of {known}"
                f" or add exchange_rates.{currency}"
            )
        rates = {code: rate / pivot for code, rate in self.rates.items() if code != currency}
        rates[self.currency] = 1 / pivot
        return Exchange(currency, rates)


def format_money(amount: Decimal, currency: str, places: int = 6) -> str:
    """$12.345678 for the currencies with a well-known symbol, 12.345678 CNY for the others."""
    text = f"{amount:,.{places}f}"
    symbol = _SYMBOLS.get(currency)
    if symbol is None:
        return f"{text} {currency}"
    return f"-{symbol}{text[1:]}" if text.startswith("-") else f"{symbol}{text}"
