"""One process's LLM services, built once and handed to every `chat` run via
`ctx.services["llm"]`: the model client (the SDK with a key, else the offline model), the circuit
breakers and the spend ledger. (A run's tools come in `ctx.tools`.)

The worker builds it at start-up with the shared pieces it owns (a `RedisBreakerStore` and a
Postgres-backed `SpendLedger`) and closes it at shutdown. Without them it falls back to
in-process ones: breakers and daily spend then only cover that process.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from shared.config import Settings
from shared.llm.breaker import (
    Breaker,
    BreakerPolicy,
    BreakerStore,
    CircuitBreaker,
    MemoryBreakerStore,
)
from shared.llm.budget import MemoryLedger, SpendLedger
from shared.llm.model import ModelClient
from shared.llm.pricing import PriceTable
from shared.llm.scripted import OfflineModel

LLM_SERVICE = "llm"


@dataclass
class LLMServices:
    model: ModelClient
    breaker: Breaker
    ledger: SpendLedger
    prices: PriceTable
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def aclose(self) -> None:
        for close in reversed(self.closers):
            await close()
        self.closers.clear()


def build_model(settings: Settings) -> tuple[ModelClient, Callable[[], Awaitable[None]] | None]:
    """The SDK client when a key is configured, else the offline scripted model."""
    if settings.anthropic_api_key is None:
        return OfflineModel(), None
    from shared.llm.anthropic_model import AnthropicModel, create_client

    model = AnthropicModel(create_client(settings))
    return model, model.aclose


def build_llm_services(
    settings: Settings,
    *,
    breaker_store: BreakerStore | None = None,
    ledger: SpendLedger | None = None,
    model: ModelClient | None = None,
) -> LLMServices:
    """Raises ConfigError (at start-up, where it belongs) on malformed LONGRUN_MODEL_PRICES."""
    prices = PriceTable.from_settings(settings)
    closers: list[Callable[[], Awaitable[None]]] = []
    if model is None:
        model, close = build_model(settings)
        if close is not None:
            closers.append(close)
    return LLMServices(
        model=model,
        breaker=CircuitBreaker(
            breaker_store or MemoryBreakerStore(), BreakerPolicy.from_settings(settings)
        ),
        ledger=ledger or MemoryLedger(),
        prices=prices,
        closers=closers,
    )
