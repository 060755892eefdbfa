"""The exception hierarchy: every error Mitrailleuse raises on purpose.

The CLI turns a ``MitrailleuseError`` into a one-line message and exit code 2;
anything else is a bug and keeps its traceback.

    MitrailleuseError
    ├── ConfigError            a config file or value is refused
    ├── TaskNameError          a user id or task name that could leave the tasks dir
    ├── TaskNotFound           no task folder at the given path, name or number
    ├── InputError             an input path cannot be used (missing, wrong suffix)
    ├── BrokerError            no Redis to talk to (embedded one cannot start, URL unreachable)
    │   └── BrokerNotRunning   a read-only command found no embedded Redis running (none started)
    └── ProviderError          a provider call failed; ``kind`` says retry, rate-limited or fatal
        └── QuotaExceeded      the account's quota is spent: stop sending to this provider
"""

from __future__ import annotations


class MitrailleuseError(Exception):
    """Base of every error raised on purpose; its text is safe to show and to log."""


class ConfigError(MitrailleuseError):
    """A configuration file or value is refused."""


class TaskNameError(MitrailleuseError):
    """A user id or task name is not a plain name."""


class TaskNotFound(MitrailleuseError):
    """No task folder matches."""


class InputError(MitrailleuseError):
    """An input path cannot be used."""


class BrokerError(MitrailleuseError):
    """Redis cannot be reached or started."""


class BrokerNotRunning(BrokerError):
    """No embedded Redis runs, and the caller asked not to start one."""
