"""The price table (``prices.json``, overridable in config) and the cost of one answer.

Records get ``cost_usd`` from :func:`cost_usd`; the budget reserves :func:`worst_case_usd`
before a call. A model without a price costs ``None`` (unknown), never a guess.
"""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

#: The key of a provider's entry that prices every model (DeepL has no models).
ANY_MODEL = "*"


class ModelPrice(BaseModel):
    """USD list prices of one model: per 1M tokens, or per 1M characters (DeepL)."""

    model_config = ConfigDict(extra="forbid")

    input_per_mtok: float = Field(default=0.0, ge=0)
    cached_input_per_mtok: float | None = Field(default=None, ge=0)
    output_per_mtok: float = Field(default=0.0, ge=0)
    per_mchar: float | None = Field(default=None, ge=0)
    #: Fraction taken off in native batch mode (OpenAI: 0.5).
    batch_discount: float = Field(default=0.0, ge=0, le=1)


Prices = dict[str, dict[str, ModelPrice]]


@cache
def shipped_prices() -> Prices:
    """The table shipped with the package (``mitrailleuse/cost/prices.json``)."""
    raw = json.loads(files("mitrailleuse.cost").joinpath("prices.json").read_text())
    return {
        provider: {
            model: ModelPrice.model_validate(price)
            for model, price in models.items()
            if not model.startswith("_")
        }
        for provider, models in raw.items()
        if not provider.startswith("_")
    }


def price_of(provider: str, model: str, overrides: Prices | None = None) -> ModelPrice | None:
    """A model's price: config overrides first, then the shipped table.

    Exact name, else the longest listed prefix (``gpt-4o-2024-08-06`` is ``gpt-4o``), else the
    provider's ``*`` entry.
    """
    for table in (overrides or {}, shipped_prices()):
        models = table.get(provider) or {}
        if model in models:
            return models[model]
        prefixes = [name for name in models if name != ANY_MODEL and model.startswith(name)]
        if prefixes:
            return models[max(prefixes, key=len)]
        if ANY_MODEL in models:
            return models[ANY_MODEL]
    return None


def cost_usd(price: ModelPrice | None, usage: dict[str, Any], batch: bool = False) -> float | None:
    """What an answer cost, from its usage (tokens, or DeepL's billed characters)."""
    if price is None:
        return None
    if price.per_mchar is not None:
        total = usage.get("characters", 0) * price.per_mchar
    else:
        prompt = usage.get("prompt_tokens", 0)
        cached = min(usage.get("cached_tokens", 0), prompt)
        cached_rate = price.cached_input_per_mtok
        if cached_rate is None:
            cached_rate = price.input_per_mtok
        total = (
            (prompt - cached) * price.input_per_mtok
            + cached * cached_rate
            + usage.get("completion_tokens", 0) * price.output_per_mtok
        )
    discount = price.batch_discount if batch else 0.0
    return round(total / 1_000_000 * (1 - discount), 10)


def worst_case_usd(price: ModelPrice, prompt_units: int, completion_tokens: int) -> float:
    """The most a call may cost: its prompt (tokens, or characters) and the completion budget."""
    if price.per_mchar is not None:
        return prompt_units * price.per_mchar / 1_000_000
    return (prompt_units * price.input_per_mtok + completion_tokens * price.output_per_mtok) / 1e6
