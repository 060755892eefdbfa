"""Cost limits enforced for the whole fleet in Redis: a run's, or a user's chats of a day.

A run's is ``general.cost_limit_usd``; a user's chats' is ``MITRAILLEUSE_CHAT_BUDGET_USD``.
Before a call its worst-case cost is reserved (``reserve.lua``: one atomic check-and-add);
after it the reservation is given back and the record's actual cost is spent. A call the
limit cannot cover waits while other calls hold reservations (their actual costs are usually
lower), and is not made once none does: the run stops dispatching and ends ``stopped_budget``,
within one call's worst-case cost of the limit. Each reservation is kept under its holder
(``"<owner> <token>"``, see :mod:`mitrailleuse.pipeline.liveness`): the reservations of a
worker that died mid-call are given back, instead of holding the run back for ever.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from enum import IntEnum

import redis

from mitrailleuse import keys
from mitrailleuse.scripts import script


class Reservation(IntEnum):
    """What the cost limit said to a call."""

    RESERVED = 1
    #: Not now: calls in flight hold reservations, and their actual costs may leave room.
    WAIT = 0
    #: Never: nothing else is reserved and the limit cannot cover this call.
    EXHAUSTED = -1


class CostLimit:
    """A spend against its limit (spend is counted even with no limit).

    A run's, or a user's chats of one day. ``spend_keys``: the hash holding ``spent_usd`` and
    ``reserved_usd``, and the reservations.
    """

    def __init__(
        self,
        client: redis.Redis,
        spend_keys: tuple[str, str],
        limit_usd: float | None,
        expire_s: int | None = None,
    ) -> None:
        self.redis = client
        self.keys = list(spend_keys)
        self.limit_usd = limit_usd
        #: How long the spend is kept after it last grew (None: as long as its run).
        self.expire_s = expire_s
        self._reserve = script(client, "pipeline/held.lua", "cost/reserve.lua")
        self._give_back = script(client, "cost/give_back.lua")
        self._spend_once = script(client, "cost/spend_once.lua")

    @classmethod
    def of_run(cls, client: redis.Redis, run_id: str, limit_usd: float | None) -> CostLimit:
        """A run's spend (``general.cost_limit_usd``), kept in the run's hash."""
        return cls(client, (keys.run(run_id), keys.reservations(run_id)), limit_usd)

    @classmethod
    def of_chats(
        cls, client: redis.Redis, user_id: str, day: str, limit_usd: float | None
    ) -> CostLimit:
        """A user's chat sessions' spend on one UTC day (``MITRAILLEUSE_CHAT_BUDGET_USD``)."""
        return cls(client, keys.chat_spend(user_id, day), limit_usd, expire_s=2 * 86_400)

    def reserve(self, usd: float, holder: str) -> Reservation:
        """Set ``usd`` aside for a call of ``holder``, if the limit can cover it now, or ever."""
        if self.limit_usd is None or usd <= 0:
            return Reservation.RESERVED
        answer = self._reserve(
            keys=self.keys, args=[repr(usd), repr(self.limit_usd), holder, keys.alive("")]
        )
        return Reservation(int(answer))

    def give_back(self, usd: float, holder: str) -> None:
        """Release ``holder``'s reservation once the call's records (and costs) are stored."""
        if self.limit_usd is not None and usd > 0:
            self._give_back(keys=self.keys, args=[holder])

    @contextmanager
    def reserved(self, usd: float, holder: str) -> Iterator[Reservation]:
        """A call's reservation, given back when the call is over, however it ended."""
        reservation = self.reserve(usd, holder)
        try:
            yield reservation
        finally:
            if reservation is Reservation.RESERVED:
                self.give_back(usd, holder)

    def spend(self, usd: float) -> None:
        """Count money spent that no record carries (an answer asked again)."""
        if usd:
            pipe = self.redis.pipeline()
            pipe.hincrbyfloat(self.keys[0], "spent_usd", usd)
            if self.expire_s:
                pipe.expire(self.keys[0], self.expire_s)
            pipe.execute()

    def spend_once(self, usd: float, marker: str) -> None:
        """:meth:`spend`, once for ``marker`` however often it is asked (a re-run collect)."""
        if usd:
            self._spend_once(keys=self.keys[:1], args=[f"spent:{marker}", repr(usd)])
