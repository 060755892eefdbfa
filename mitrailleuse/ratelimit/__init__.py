"""Fleet-wide rate limits: the algorithms in Lua, run atomically by Redis."""

from mitrailleuse.ratelimit.limiter import (
    WAITING,
    AllInFlight,
    Claims,
    Grant,
    Held,
    ItemState,
    Lease,
    Limits,
    Rates,
    RedisLimiter,
    task_limiter,
)

__all__ = [
    "WAITING",
    "AllInFlight",
    "Claims",
    "Grant",
    "Held",
    "ItemState",
    "Lease",
    "Limits",
    "Rates",
    "RedisLimiter",
    "task_limiter",
]
