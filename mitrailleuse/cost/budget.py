"""A run's hard budget (``general.cost_limit_usd``), enforced for the whole fleet in Redis.

Before a call its worst-case cost is reserved (``reserve.lua``: one atomic check-and-add);
after it the reservation is given back and the record's actual cost is spent. A call the
budget cannot cover is not made: the run stops dispatching and ends ``stopped_budget``.
"""

from __future__ import annotations

from importlib.resources import files

import redis

from mitrailleuse import keys

_RESERVE = files("mitrailleuse.cost").joinpath("reserve.lua").read_text()


class RunBudget:
    """The spend of one run against its limit (spend is counted even with no limit)."""

    def __init__(self, client: redis.Redis, run_id: str, limit_usd: float | None) -> None:
        self.redis = client
        self.key = keys.run(run_id)
        self.limit_usd = limit_usd
        self._reserve = client.register_script(_RESERVE)

    def reserve(self, usd: float) -> bool:
        """Set ``usd`` aside for a call; False when the budget cannot cover it."""
        if self.limit_usd is None or usd <= 0:
            return True
        return bool(self._reserve(keys=[self.key], args=[repr(usd), repr(self.limit_usd)]))

    def give_back(self, usd: float) -> None:
        """Release a reservation once the call's records (and their costs) are stored."""
        if self.limit_usd is not None and usd > 0:
            self.redis.hincrbyfloat(self.key, "reserved_usd", -usd)

    def spend(self, usd: float) -> None:
        """Count money spent that no record carries (an answer asked again)."""
        if usd:
            self.redis.hincrbyfloat(self.key, "spent_usd", usd)
