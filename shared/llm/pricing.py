"""Model prices and cost arithmetic, as pure functions over `Decimal`.

Prices are US dollars per million tokens (Anthropic list prices, standard tier, prompts up to
200K tokens). A model id is priced by the longest table key that is a prefix of it at a `-`
boundary, so `claude-sonnet-4-5-20250929` takes the `claude-sonnet-4-5` row and an unlisted
`claude-sonnet-4-9` the `claude-sonnet-4` row. A model no row matches is charged the configured
fallback price: nothing is ever free by omission. Costs are rounded half-up to 1e-10 USD.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import orjson

from shared.config import Settings
from shared.errors import ConfigError

MTOK = Decimal(1_000_000)
COST_QUANTUM = Decimal("1e-10")
# Where a row gives no cache prices: a 5-minute cache write costs 1.25x input, a read 0.1x.
CACHE_WRITE_FACTOR = Decimal("1.25")
CACHE_READ_FACTOR = Decimal("0.1")
OFFLINE_MODEL = "longrun-offline"


@dataclass(frozen=True)
class Price:
    input: Decimal
    output: Decimal
    cache_write: Decimal
    cache_read: Decimal

    @classmethod
    def of(
        cls,
        input: float | str | Decimal,
        output: float | str | Decimal,
        cache_write: float | str | Decimal | None = None,
        cache_read: float | str | Decimal | None = None,
    ) -> Price:
        i, o = Decimal(str(input)), Decimal(str(output))
        cw = i * CACHE_WRITE_FACTOR if cache_write is None else Decimal(str(cache_write))
        cr = i * CACHE_READ_FACTOR if cache_read is None else Decimal(str(cache_read))
        if min(i, o, cw, cr) < 0:
            raise ValueError("prices must not be negative")
        return cls(i, o, cw, cr)


@dataclass(frozen=True)
class Usage:
    """Token counts of one model turn, as the API reports them."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


DEFAULT_PRICES: dict[str, Price] = {
    # Opus 4.5 and later cut the price; Opus 4 and 4.1 keep the old tier.
    "claude-opus-4": Price.of(15, 75, "18.75", "1.5"),
    "claude-opus-4-0": Price.of(15, 75, "18.75", "1.5"),
    "claude-opus-4-1": Price.of(15, 75, "18.75", "1.5"),
    "claude-opus-4-5": Price.of(5, 25, "6.25", "0.5"),
    "claude-opus-4-6": Price.of(5, 25, "6.25", "0.5"),
    "claude-opus-4-7": Price.of(5, 25, "6.25", "0.5"),
    "claude-opus-4-8": Price.of(5, 25, "6.25", "0.5"),
    "claude-sonnet-4": Price.of(3, 15, "3.75", "0.3"),
    "claude-haiku-4": Price.of(1, 5, "1.25", "0.1"),
    "claude-3-7-sonnet": Price.of(3, 15, "3.75", "0.3"),
    "claude-3-5-sonnet": Price.of(3, 15, "3.75", "0.3"),
    "claude-3-5-haiku": Price.of("0.8", 4, 1, "0.08"),
    "claude-3-haiku": Price.of("0.25", "1.25", "0.3", "0.03"),
    "claude-3-opus": Price.of(15, 75, "18.75", "1.5"),
    # The 5 series, from secondary sources (cache prices at the default factors): override
    # with LONGRUN_MODEL_PRICES when the price list says otherwise.
    "claude-opus-5": Price.of(5, 25),
    "claude-opus-5-5": Price.of(4, 20),
    "claude-sonnet-5": Price.of(2, 10),
    "claude-haiku-5": Price.of(1, 5),
    "claude-fable-5": Price.of(10, 50),
    "claude-mythos-5": Price.of(10, 50),
    # longrun's own offline scripted model costs nothing: it is listed, not unknown.
    OFFLINE_MODEL: Price.of(0, 0, 0, 0),
}


@dataclass(frozen=True)
class PriceTable:
    rows: Mapping[str, Price]
    fallback: Price

    @classmethod
    def from_settings(cls, settings: Settings) -> PriceTable:
        return cls(
            rows=merge_prices(DEFAULT_PRICES, settings.model_prices_json),
            fallback=Price.of(
                settings.fallback_price_input_per_mtok, settings.fallback_price_output_per_mtok
            ),
        )

    @staticmethod
    def fallback_default() -> Price:
        return Price.of(
            Settings.fallback_price_input_per_mtok, Settings.fallback_price_output_per_mtok
        )

    def price(self, model: str) -> Price:
        return price_for(model, self.rows, self.fallback)


def _price_row(model: str, row: Any) -> Price:
    if not isinstance(row, dict) or "input" not in row or "output" not in row:
        raise ConfigError(f"LONGRUN_MODEL_PRICES[{model!r}] needs numeric 'input' and 'output'")
    try:
        return Price.of(row["input"], row["output"], row.get("cache_write"), row.get("cache_read"))
    except (ArithmeticError, ValueError, TypeError):
        raise ConfigError(f"LONGRUN_MODEL_PRICES[{model!r}] has a bad price: {row!r}") from None


def merge_prices(defaults: Mapping[str, Price], raw_json: str | None) -> dict[str, Price]:
    """Configured rows (a JSON object model -> {"input", "output", "cache_write"?,
    "cache_read"?} in USD per MTok) over the defaults. ConfigError on anything malformed."""
    table = dict(defaults)
    if not raw_json:
        return table
    try:
        parsed = orjson.loads(raw_json)
    except orjson.JSONDecodeError:
        raise ConfigError("LONGRUN_MODEL_PRICES must be a JSON object") from None
    if not isinstance(parsed, dict):
        raise ConfigError("LONGRUN_MODEL_PRICES must be a JSON object")
    for model, row in parsed.items():
        table[str(model)] = _price_row(str(model), row)
    return table


def price_for(model: str, rows: Mapping[str, Price], fallback: Price) -> Price:
    """The row whose key is the longest prefix of `model` ending at a `-` (or the whole id)."""
    best: str | None = None
    for key in rows:
        matches = model == key or model.startswith(key + "-")
        if matches and (best is None or len(key) > len(best)):
            best = key
    return fallback if best is None else rows[best]


def turn_cost(usage: Usage, price: Price) -> Decimal:
    """USD for one turn, rounded half-up to 1e-10."""
    raw = (
        usage.input_tokens * price.input
        + usage.output_tokens * price.output
        + usage.cache_creation_input_tokens * price.cache_write
        + usage.cache_read_input_tokens * price.cache_read
    ) / MTOK
    return raw.quantize(COST_QUANTUM, rounding=ROUND_HALF_UP)
