"""Fleet-wide rate limits: the algorithms in Lua, run atomically by Redis."""

from mitrailleuse.ratelimit.limiter import Grant, Limits, Rates, RedisLimiter

__all__ = ["Grant", "Limits", "Rates", "RedisLimiter"]
