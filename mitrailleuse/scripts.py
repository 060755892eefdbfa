"""Redis scripts: the package's Lua files, registered on a client.

A script may begin with shared Lua: :func:`script` joins the files it is given, in order, so
that ``pipeline/held.lua`` (whose ``held_elsewhere`` every claim and lease uses) is written once.
Each script runs atomically on the server, in one round trip.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

import redis
from redis.commands.core import Script


@cache
def source(*paths: str) -> str:
    """The Lua of ``paths`` (relative to the package, e.g. ``"ratelimit/acquire.lua"``)."""
    return "\n".join(files("mitrailleuse").joinpath(path).read_text() for path in paths)


def script(client: redis.Redis, *paths: str) -> Script:
    """The script made of ``paths``, registered on ``client`` (loaded again after a restart)."""
    return client.register_script(source(*paths))
