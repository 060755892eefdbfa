"""Who calls the service: bearer tokens, each mapped to a user id (``MITRAILLEUSE_API_TOKENS``).

Without tokens the service serves anyone (it then binds to loopback only); with them, every
call names its token and sees only its user's tasks.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Mapping

from mitrailleuse.errors import ConfigError, MitrailleuseError
from mitrailleuse.taskfolder import check_name

#: The variable holding ``user:token`` pairs, comma-separated.
TOKENS_VARIABLE = "MITRAILLEUSE_API_TOKENS"
#: The shortest token a service beyond loopback accepts.
MIN_TOKEN_CHARS = 16


class Unauthenticated(MitrailleuseError):
    """A call without a token, or with one the service does not know."""


class Forbidden(MitrailleuseError):
    """A call for another user than its token's."""


def parse_tokens(text: str) -> dict[str, str]:
    """``alice:tok1,bob:tok2`` → token → user id; a malformed entry is refused, naming it."""
    tokens: dict[str, str] = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        user, sep, token = entry.partition(":")
        if not sep or not user or not token:
            raise ConfigError(f"{TOKENS_VARIABLE}: expected user:token pairs, got {entry[:3]}…")
        if token in tokens:
            raise ConfigError(f"{TOKENS_VARIABLE}: one token is given to two users")
        tokens[token] = check_name(user, "user id")
    return tokens


def tokens_from_env(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The tokens the environment gives (none: an open, loopback-only service)."""
    return parse_tokens(environ.get(TOKENS_VARIABLE, ""))


def is_loopback(address: str) -> bool:
    """Whether ``address`` (a host name or an IP) is this machine only."""
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False


def check_tokens_beyond_loopback(address: str, tokens: Mapping[str, str]) -> None:
    """Refuse to serve beyond loopback without tokens, or with short ones (a ConfigError)."""
    if is_loopback(address):
        return
    if not tokens:
        raise ConfigError(f"serving on {address} needs {TOKENS_VARIABLE} (user:token pairs)")
    if any(len(token) < MIN_TOKEN_CHARS for token in tokens):
        raise ConfigError(f"serving on {address} needs tokens of {MIN_TOKEN_CHARS}+ characters")


class Caller:
    """The user a call acts for: its token's, or anyone when the service has no tokens."""

    def __init__(self, tokens: Mapping[str, str], authorization: str | None) -> None:
        self.user_id: str | None = None
        if not tokens:
            return
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("a bearer token is required (authorization: Bearer <token>)")
        for known, user in tokens.items():
            if hmac.compare_digest(known, token):
                self.user_id = user
                return
        raise Unauthenticated("unknown token")

    def user_for(self, asked: str) -> str:
        """The user a call may act for: the one asked (or the token's when none is asked)."""
        if self.user_id is None:
            return asked
        if asked and asked != self.user_id:
            raise Forbidden(f"this token acts for user {self.user_id!r}, not {asked!r}")
        return self.user_id

    def may_see(self, user_id: str) -> bool:
        """Whether the caller may see a task of ``user_id``."""
        return self.user_id is None or self.user_id == user_id
