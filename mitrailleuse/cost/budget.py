"""A run's hard budget (``general.cost_limit_usd``), enforced for the whole fleet in Redis.

Before a call its worst-case cost is reserved (``reserve.lua``: one atomic check-and-add);
after it the reservation is given back and the record's actual cost is spent. A call the
budget cannot cover waits while other calls hold reservations (their actual costs are usually
lower), and is not made once none does: the run stops dispatching and ends ``stopped_budget``,
within one call's worst-case cost of the limit.
"""

from __future__ import annotations

from enum import IntEnum
from importlib.resources import files

import redis

from mitrailleuse import keys

_RESERVE = files("mitrailleuse.cost").joinpath("reserve.lua").read_text()


class Reservation(IntEnum):
    """What the budget said to a call."""

    RESERVED = 1
    #: Not now: calls in flight hold reservations, and their actual costs may leave room.
    WAIT = 0
    #: Never: nothing else is reserved and the budget cannot cover this call.
    EXHAUSTED = -1


class RunBudget:
    """The spend of one run against its limit (spend is counted even with no limit)."""

    def __init__(self, client: redis.Redis, run_id: str, limit_usd: float | None) -> None:
        self.redis = client
        self.key = keys.run(run_id)
        self.limit_usd = limit_usd
        self._reserve = client.register_script(_RESERVE)

    def reserve(self, usd: float) -> Reservation:
        """Set ``usd`` aside for a call, if the budget can cover it now, or ever."""
        if self.limit_usd is None or usd <= 0:
            return Reservation.RESERVED
        answer = self._reserve(keys=[self.key], args=[repr(usd), repr(self.limit_usd)])
        return Reservation(int(answer))

    def give_back(self, usd: float) -> None:
        """Release a reservation once the call's records (and their costs) are stored."""
        if self.limit_usd is not None and usd > 0:
            self.redis.hincrbyfloat(self.key, "reserved_usd", -usd)

    def spend(self, usd: float) -> None:
        """Count money spent that no record carries (an answer asked again)."""
        if usd:
            self.redis.hincrbyfloat(self.key, "spent_usd", usd)
