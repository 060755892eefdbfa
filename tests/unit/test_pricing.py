"""The price table and what an answer costs."""

from __future__ import annotations

import pytest

from mitrailleuse.cost.pricing import ModelPrice, cost_usd, price_of, shipped_prices, worst_case_usd


def test_every_shipped_provider_has_dated_prices():
    table = shipped_prices()
    assert {"openai", "deepseek", "deepl"} <= set(table)
    assert table["openai"]["gpt-4o-mini"].batch_discount == 0.5


def test_model_is_matched_exactly_then_by_longest_prefix():
    assert price_of("openai", "gpt-4o-mini") == shipped_prices()["openai"]["gpt-4o-mini"]
    assert price_of("openai", "gpt-4o-2024-08-06") == shipped_prices()["openai"]["gpt-4o"]
    assert price_of("openai", "gpt-4o-mini-2024-07-18") == shipped_prices()["openai"]["gpt-4o-mini"]
    assert price_of("deepl", "deepl").per_mchar == 25.0
    assert price_of("openai", "some-new-model") is None


def test_config_overrides_win():
    mine = ModelPrice(input_per_mtok=1.0, output_per_mtok=2.0)
    assert price_of("openai", "gpt-4o", {"openai": {"gpt-4o": mine}}) is mine
    assert price_of("openai", "new-model", {"openai": {"new-model": mine}}) is mine


def test_cost_of_tokens_cached_tokens_batch_and_characters():
    price = ModelPrice(
        input_per_mtok=2.0, cached_input_per_mtok=1.0, output_per_mtok=8.0, batch_discount=0.5
    )
    usage = {"prompt_tokens": 1_000_000, "cached_tokens": 500_000, "completion_tokens": 250_000}
    assert cost_usd(price, usage) == pytest.approx(1.0 + 0.5 + 2.0)
    assert cost_usd(price, usage, batch=True) == pytest.approx(1.75)
    assert cost_usd(ModelPrice(per_mchar=25.0), {"characters": 2_000}) == pytest.approx(0.05)
    assert cost_usd(None, usage) is None


def test_worst_case_counts_the_whole_completion_budget():
    price = ModelPrice(input_per_mtok=1.0, output_per_mtok=4.0)
    assert worst_case_usd(price, 1_000, 500) == pytest.approx((1_000 + 2_000) / 1e6)
    assert worst_case_usd(ModelPrice(per_mchar=20.0), 1_000, 0) == pytest.approx(0.02)


def test_the_progress_bar_shows_spend_and_projection():
    from mitrailleuse.api import Progress
    from mitrailleuse.display import spend_line

    start = Progress("running", total=100, done=0, succeeded=0, failed=0, cached=0)
    assert spend_line(start) == ""
    quarter = Progress("running", 100, 25, 25, 0, 0, spent_usd=0.01)
    assert spend_line(quarter) == "$0.0100 → ~$0.0400"
