"""The provider contract: what every provider module implements, and nothing more.

The feeder calls :meth:`Provider.build_request` (no network, no key) to turn an input item into
the payload a Celery message carries; a worker builds the provider with its key and calls
:meth:`Provider.send` on a group of payloads. Retries, rate limits, records and cost live in
shared code (:mod:`mitrailleuse.pipeline`); a provider only says how to talk to its API and
how to sort its errors.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO, ClassVar

from pydantic import BaseModel

from mitrailleuse.errors import MitrailleuseError

#: Status codes that will not get better by asking again.
PERMANENT_STATUS = frozenset({400, 401, 403, 404, 413, 422})


class ErrorKind(enum.StrEnum):
    """What the pipeline does with a failed call."""

    RETRY = "retry"  #: try again after a backoff
    RATE_LIMITED = "rate_limited"  #: try again after the provider's Retry-After, fleet-wide
    FATAL = "fatal"  #: never retry: the request itself is refused
    QUOTA = "quota"  #: the account is out of quota: stop sending to this provider


class InvalidItem(MitrailleuseError):
    """An input item a request cannot be built from (e.g. its prompt field is missing)."""


class ProviderError(MitrailleuseError):
    """A call failed; ``kind`` says whether and how to retry, ``type`` names the cause."""

    def __init__(
        self,
        kind: ErrorKind,
        type: str,
        message: str,
        status_code: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.type = type
        self.message = message
        self.status_code = status_code
        self.retry_after_s = retry_after_s

    def as_record_error(self) -> dict[str, Any]:
        """The ``error`` object of a failed result record."""
        return {"type": self.type, "message": self.message, "status_code": self.status_code}


class QuotaExceeded(ProviderError):
    """The account's quota is spent: the run's remaining items of this provider fail at once."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(ErrorKind.QUOTA, "quota_exceeded", message, status_code)


@dataclass(slots=True)
class Answer:
    """One item's answer, read out of a provider response."""

    output: str
    response: dict[str, Any]
    usage: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class CallResult:
    """What one call returned: an answer per payload, and the rate-limit headers seen."""

    answers: list[Answer]
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class NativeBatch:
    """A native batch as its provider reports it; ``raw_status`` is the provider's own word."""

    batch_id: str
    raw_status: str
    request_counts: dict[str, int] = field(default_factory=dict)
    output_file_id: str | None = None
    error_file_id: str | None = None


@dataclass(frozen=True, slots=True)
class BatchResult:
    """One line of a native batch's results: the item it answers, and its answer or error."""

    custom_id: str | None
    outcome: Answer | ProviderError


class NativeBatchAPI(ABC):
    """What the batch machinery (``mitrailleuse.batch``) needs of a provider's batch API.

    The machinery writes the request files, records each step, polls, downloads and turns the
    results into records through these methods alone: a provider adds its native batches by
    implementing them (OpenAI's: ``providers/openai.py``).
    """

    #: The most requests, and bytes, one batch may hold.
    max_requests: ClassVar[int]
    max_bytes: ClassVar[int]

    @abstractmethod
    def request_line(self, custom_id: str, payload: Mapping[str, Any]) -> bytes:
        """One line of a batch's request file, newline included."""

    @abstractmethod
    def upload(self, name: str, handle: BinaryIO) -> str:
        """Upload a request file; its file id."""

    @abstractmethod
    def create(self, file_id: str, completion_window: str, metadata: dict[str, str]) -> NativeBatch:
        """Create the batch of an uploaded file."""

    @abstractmethod
    def created_for(self, file_id: str) -> NativeBatch | None:
        """The batch already created for ``file_id``, if any (a crash may have hidden it)."""

    @abstractmethod
    def retrieve(self, batch_id: str) -> NativeBatch:
        """The batch as it is now."""

    @abstractmethod
    def download(self, file_id: str) -> bytes:
        """A results file's content."""

    @abstractmethod
    def result(self, entry: dict[str, Any]) -> BatchResult:
        """Read one parsed line of a results file."""

    @abstractmethod
    def cancel(self, batch_id: str) -> None:
        """Ask the provider to cancel the batch."""


class Provider(ABC):
    """A provider's API: build a payload from an item, send payloads, sort errors.

    Subclasses declare their capabilities as class attributes, like kombu's ``implements``.
    """

    #: The short name used in configs, task folders and queue names.
    name: ClassVar[str]
    #: The pydantic model of the provider's config section.
    config_model: ClassVar[type[BaseModel]]
    #: Environment variables the key is read from, in order of preference.
    key_variables: ClassVar[tuple[str, ...]]
    #: How many items one call may carry (DeepL takes 50 texts per request).
    max_items_per_call: ClassVar[int] = 1
    #: The largest request body, in bytes, a grouped call may have.
    max_bytes_per_call: ClassVar[int | None] = None
    #: Whether the provider has a native (discounted, asynchronous) batch API.
    supports_native_batch: ClassVar[bool] = False
    #: Whether :meth:`send_async` exists: the calls of a message then go out concurrently on
    #: the worker's call loop; without it they are sent one after the other by :meth:`send`.
    async_calls: bool = False

    def __init__(
        self, config: Any, api_key: str | None, proxies: Mapping[str, str] | None = None
    ) -> None:
        self.config = config
        self.api_key = api_key
        #: ``{"http": url, "https": url}`` from ``general.proxies``: every call goes through them.
        self.proxies = proxies

    @property
    def model(self) -> str:
        """The model name written into every record (and scoping the rate limits)."""
        return self.model_name(self.config)

    @classmethod
    def model_name(cls, config: Any) -> str:
        """The model a config selects, without building a client."""
        return config.api_information.model

    @classmethod
    @abstractmethod
    def build_request(cls, item: Mapping[str, Any], config: Any) -> dict[str, Any]:
        """The payload for one item; raises InvalidItem when the item lacks what it needs."""

    @classmethod
    def group_key(cls, payload: Mapping[str, Any]) -> Hashable:
        """Payloads with different keys never share a call (DeepL: one target language)."""
        return None

    def estimate_tokens(self, payloads: Sequence[dict[str, Any]]) -> int:
        """Tokens a call may use, for the tokens-per-minute budget (0: not counted in tokens)."""
        return 0

    def cost_units(self, payloads: Sequence[dict[str, Any]]) -> tuple[int, int]:
        """``(prompt, completion budget)`` of a call, in the units the provider bills.

        Tokens, or characters (DeepL). The budget reserves their worst-case price before the call.
        """
        return 0, 0

    def deterministic(self) -> bool:
        """Whether an identical request gets the same answer: what ``cache: auto`` caches."""
        return False

    def request_identity(self, payload: Mapping[str, Any]) -> Any:
        """Everything that shapes the answer to a payload: the response cache hashes it."""
        return {"model": self.model, "payload": payload}

    @staticmethod
    def used_tokens(answers: Sequence[Answer]) -> int | None:
        """Tokens a call used, from the response's usage (None: unknown)."""
        totals = [a.usage.get("total_tokens") for a in answers]
        return sum(totals) if totals and all(t is not None for t in totals) else None  # type: ignore[misc]

    @classmethod
    def payload_size(cls, payload: Mapping[str, Any]) -> int:
        """The bytes a payload adds to a grouped request (used to keep groups under the cap)."""
        return 0

    @abstractmethod
    def send(self, payloads: Sequence[dict[str, Any]], timeout_s: float) -> CallResult:
        """Call the provider once for ``payloads``; raises ProviderError on failure."""

    async def send_async(self, payloads: Sequence[dict[str, Any]], timeout_s: float) -> CallResult:
        """:meth:`send` through the SDK's async client, on the worker's call loop."""
        raise NotImplementedError(f"{self.name} has no async client")

    def native_batches(self) -> NativeBatchAPI:
        """The provider's native batch API (``supports_native_batch`` says whether it has one)."""
        raise NotImplementedError(f"{self.name} has no native batch API")

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release connections."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release the async client's connections (on the call loop)."""
