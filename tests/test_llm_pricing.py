"""Model prices and cost arithmetic: pure functions, no I/O."""

from __future__ import annotations

from decimal import Decimal

import pytest

from shared.config import Settings
from shared.errors import ConfigError
from shared.llm.budget import budget_verdict
from shared.llm.pricing import DEFAULT_PRICES, Price, PriceTable, Usage, merge_prices, turn_cost

TABLE = PriceTable.from_settings(Settings())


@pytest.mark.parametrize(
    ("model", "input_price", "output_price"),
    [
        ("claude-opus-4-1", 15, 75),
        ("claude-opus-4-20250514", 15, 75),
        ("claude-opus-4-5-20251101", 5, 25),
        ("claude-opus-4-6", 5, 25),
        ("claude-sonnet-4-5-20250929", 3, 15),
        ("claude-sonnet-4-6", 3, 15),
        ("claude-sonnet-4-20250514", 3, 15),
        ("claude-haiku-4-5-20251001", 1, 5),
        ("claude-3-7-sonnet-latest", 3, 15),
        ("claude-3-5-sonnet-20241022", 3, 15),
        ("claude-3-5-haiku-20241022", Decimal("0.8"), 4),
    ],
)
def test_a_model_id_takes_the_longest_listed_prefix(
    model: str, input_price: Decimal | int, output_price: int
) -> None:
    price = TABLE.price(model)
    assert (price.input, price.output) == (Decimal(input_price), Decimal(output_price))


def test_an_unknown_model_is_charged_the_fallback_price_never_nothing() -> None:
    assert TABLE.price("gpt-9") == Price.of(15, 75)
    # A prefix only counts at a "-" boundary: "claude-opus-41" is not an Opus 4.
    assert TABLE.price("claude-opus-41") == TABLE.fallback
    assert TABLE.fallback.input > 0


def test_configured_prices_override_the_defaults_and_add_models() -> None:
    rows = merge_prices(
        DEFAULT_PRICES,
        '{"claude-sonnet-4": {"input": 1, "output": 2}, "my-model": {"input": 0.5, "output": 1,'
        ' "cache_read": 0.01}}',
    )
    assert rows["claude-sonnet-4"] == Price.of(1, 2)
    assert rows["my-model"].cache_read == Decimal("0.01")
    assert rows["my-model"].cache_write == Decimal("0.625")
    assert rows["claude-opus-4-1"] == DEFAULT_PRICES["claude-opus-4-1"]


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        "[1, 2]",
        '{"m": {"input": 1}}',
        '{"m": {"input": "cheap", "output": 1}}',
        '{"m": {"input": -1, "output": 1}}',
        '{"m": 3}',
    ],
)
def test_malformed_configured_prices_fail_at_start_up(raw: str) -> None:
    with pytest.raises(ConfigError, match="LONGRUN_MODEL_PRICES"):
        merge_prices(DEFAULT_PRICES, raw)


def test_turn_cost_adds_every_kind_of_token_at_its_price() -> None:
    usage = Usage(
        input_tokens=1_000,
        output_tokens=2_000,
        cache_creation_input_tokens=10_000,
        cache_read_input_tokens=100_000,
    )
    price = DEFAULT_PRICES["claude-sonnet-4"]
    # 1000*3 + 2000*15 + 10000*3.75 + 100000*0.3 = 3000 + 30000 + 37500 + 30000 per million
    assert turn_cost(usage, price) == Decimal("0.1005")


def test_turn_cost_is_rounded_half_up_to_a_ten_billionth_of_a_dollar() -> None:
    assert turn_cost(Usage(input_tokens=1), Price.of("0.00015", 0)) == Decimal("2E-10")
    assert turn_cost(Usage(input_tokens=1), Price.of("0.00014", 0)) == Decimal("1E-10")


def test_budgets_are_hit_when_spend_reaches_the_ceiling_and_zero_means_none() -> None:
    assert budget_verdict(Decimal("0.99"), 5, 1.0, 20.0) is None
    assert budget_verdict(Decimal("1.00"), 5, 1.0, 20.0) == "cost_budget_exceeded"
    assert budget_verdict(Decimal("0.10"), 20.0, 1.0, 20.0) == "daily_budget_exceeded"
    assert budget_verdict(Decimal(500), 500.0, 0.0, 0.0) is None
