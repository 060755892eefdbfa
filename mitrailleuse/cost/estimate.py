"""``execute --estimate``: what a task would send and cost, computed without calling anything.

Every input item is read and turned into its request, as the feeder would; the provider counts
its prompt (tokens by the characters / 4 heuristic, or DeepL's characters) and its completion
budget (``max_tokens``). The cost is a range: the prompt alone, up to the prompt plus every
completion at its budget; real answers are usually far shorter than the budget.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from mitrailleuse.cost.pricing import ModelPrice, price_of, worst_case_usd
from mitrailleuse.inputs import iter_items
from mitrailleuse.modes import resolve_mode
from mitrailleuse.providers import InvalidItem, provider_class
from mitrailleuse.taskfolder import TaskFolder


@dataclass(frozen=True, slots=True)
class Estimate:
    """The projected size and cost of a task's run."""

    provider: str
    model: str
    batch: bool
    items: int
    #: How many items cannot be sent, for each reason, most frequent first.
    reasons: dict[str, int]
    prompt_units: int
    completion_budget: int
    price: ModelPrice | None

    @property
    def invalid(self) -> int:
        """How many items cannot be sent."""
        return sum(self.reasons.values())

    @property
    def unit(self) -> str:
        """What ``prompt_units`` counts."""
        return "characters" if self.price is not None and self.price.per_mchar else "tokens"

    def cost_usd(self, with_completions: bool) -> float | None:
        """The prompt's cost, or the worst case with every completion at its budget."""
        if self.price is None:
            return None
        completion = self.completion_budget if with_completions else 0
        cost = worst_case_usd(self.price, self.prompt_units, completion)
        return cost * (1 - self.price.batch_discount) if self.batch else cost


#: Where in its file an item is (``line 7: ``): dropped, so that one reason counts its items.
_LOCATION = re.compile(r"^(line|element) \d+: ")


def estimate(folder: TaskFolder) -> Estimate:
    """Read the task's inputs and size the run they make (sampling applies)."""
    config = folder.config()
    name = folder.provider
    section = config.provider(name)
    provider = provider_class(name)(section, None)
    sampling = config.general.sampling
    limit = sampling.sample_size if sampling.enable_sampling else None
    items = prompt = completion = 0
    reasons: Counter[str] = Counter()
    for item, _ in iter_items(folder.input_files(), limit=limit):
        try:
            if item.data is None:
                raise InvalidItem(item.error or "invalid")
            payload = provider.build_request(item.data, section)
        except InvalidItem as error:
            reasons[_LOCATION.sub("", str(error))] += 1
            continue
        units, budget = provider.cost_units([payload])
        items, prompt, completion = items + 1, prompt + units, completion + budget
    return Estimate(
        provider=name,
        model=provider.model,
        batch=resolve_mode(name, section)[0] == "batch",
        items=items,
        reasons=dict(reasons.most_common()),
        prompt_units=prompt,
        completion_budget=completion,
        price=price_of(name, provider.model, config.general.prices),
    )
