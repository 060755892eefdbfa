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
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import orjson
from pydantic import BaseModel

from mitrailleuse.errors import ConfigError, MitrailleuseError

if TYPE_CHECKING:
    from mitrailleuse.structured import Structured

#: Status codes that will not get better by asking again.
PERMANENT_STATUS = frozenset({400, 401, 403, 404, 413, 422})


class ErrorKind(enum.StrEnum):
    """What the pipeline does with a failed call."""

    RETRY = "retry"  #: try again after a backoff
    RATE_LIMITED = "rate_limited"  #: try again after the provider's Retry-After, fleet-wide
    FATAL = "fatal"  #: never retry: the request itself is refused
    QUOTA = "quota"  #: the account is out of quota: stop sending to this provider


def extra_needed(error: ModuleNotFoundError, extra: str, *modules: str) -> ConfigError:
    """The one-line error of a provider whose SDK (an extra) is not installed.

    Raises ``error`` itself when what is missing is not the SDK (``modules``): a broken
    install must not be taken for a missing extra.
    """
    if error.name not in modules:
        raise error
    return ConfigError(
        f"the {extra} provider needs its SDK ({error.name}): pip install 'mitrailleuse[{extra}]'"
    )


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
    #: Cut at the completion token limit (OpenAI's ``finish_reason: length``).
    truncated: bool = False
    #: What the model said declining to answer (a paid answer that is no answer).
    refusal: str | None = None


@dataclass(frozen=True, slots=True)
class Budget:
    """What a response said of one rate budget (None: not said)."""

    limit: int | None = None
    remaining: int | None = None
    reset_s: float | None = None


@dataclass(frozen=True, slots=True)
class RateLimitReport:
    """The rate limits a response announced, in the provider's own headers' stead.

    Each provider reads its headers into this (OpenAI's ``x-ratelimit-*``, Anthropic's
    ``anthropic-ratelimit-*``); the limiter follows it without knowing whose they were.
    """

    requests: Budget = Budget()
    tokens: Budget = Budget()


#: A response that said nothing of the limits.
NO_REPORT = RateLimitReport()


def header_int(value: str | bytes | None) -> int | None:
    """A header's (or a Redis value's) whole number (``"120"``, ``"120.0"``); None if absent."""
    try:
        return int(float(value)) if value is not None else None
    except ValueError:
        return None


@dataclass(slots=True)
class CallResult:
    """What one call returned: an answer per payload, and what it said of the rate limits."""

    answers: list[Answer]
    limits: RateLimitReport = NO_REPORT


#: A native batch's life in words every provider's maps to; ``raw_status`` keeps its own.
BatchStatus = Literal["in_progress", "canceling", "completed", "failed", "expired", "cancelled"]
#: The statuses after which a batch changes no more.
FINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "expired", "cancelled"})
#: How far a provider's clock may lag ours: a batch it says it created this long before we
#: recorded the step ``creating`` may still be ours.
CLOCK_SKEW_S = 300.0


@dataclass(frozen=True, slots=True)
class NativeBatch:
    """A native batch as its provider reports it.

    ``request_counts`` holds ``completed`` and ``failed`` (and ``total`` where the provider
    says it); ``output_file_id`` and
    ``error_file_id`` are whatever the provider's :meth:`NativeBatchAPI.download` takes to
    fetch the result lines (a file id, or the batch's own id where results are served by it).
    """

    batch_id: str
    status: BatchStatus
    raw_status: str
    request_counts: dict[str, int] = field(default_factory=dict)
    output_file_id: str | None = None
    error_file_id: str | None = None

    @property
    def ended(self) -> bool:
        """Whether the batch will change no more (its results, if any, can be read)."""
        return self.status in FINAL_STATUSES


@dataclass(frozen=True, slots=True)
class BatchFile:
    """A batch's request file as the machinery wrote it, and what it was uploaded as.

    ``display_name`` is unique to the run and batch: a provider that can label a batch labels
    it so, to find it again after a crash between its creation and our record of it.
    """

    path: Path
    display_name: str
    metadata: dict[str, str]
    requests: int
    file_id: str | None = None


@dataclass(frozen=True, slots=True)
class BatchResult:
    """One line of a native batch's results: the item it answers, and its answer or error.

    No outcome: the request was never processed (expired, cancelled), as if it were missing.
    """

    custom_id: str | None
    outcome: Answer | ProviderError | None


class NativeBatchAPI(ABC):
    """What the batch machinery (``mitrailleuse.batch``) needs of a provider's batch API.

    The machinery writes the request files, records each step, polls, downloads and turns the
    results into records through these methods alone: a provider adds its native batches by
    implementing them (``providers/openai.py``, ``anthropic.py``, ``gemini.py``).
    """

    #: The most requests, and bytes, one batch may hold.
    max_requests: ClassVar[int]
    max_bytes: ClassVar[int]
    #: How many of the account's batches are searched for one created before a crash.
    lookup_limit: ClassVar[int] = 1000
    #: Where a request line holds the request's body.
    body_key: ClassVar[str]

    #: The errors of the provider's SDK (``refusal`` sorts them with the provider's classify).
    sdk_errors: ClassVar[tuple[type[BaseException], ...]] = ()

    def __init__(self, provider: Any) -> None:
        #: The provider whose client, request bodies and answers the batches use.
        self.provider = provider
        self.client = provider.client

    def reasked_line(self, line: bytes, messages: list[dict[str, Any]]) -> bytes:
        """A request line with ``messages`` added to its conversation: a re-ask, batched."""
        entry = orjson.loads(line)
        entry[self.body_key] = self.provider.extend_body(entry[self.body_key], messages)
        return orjson.dumps(entry) + b"\n"

    def refusal(self, error: BaseException) -> ProviderError | None:
        """The provider's refusal of a batch for good (a bad request, a bad key, no quota).

        None for any other error: it is tried again; a refused batch fails its items.
        """
        if not isinstance(error, self.sdk_errors):
            return None
        sorted_error = self.provider.classify(error)
        return sorted_error if sorted_error.kind in (ErrorKind.FATAL, ErrorKind.QUOTA) else None

    def custom_id(self, run_id: str, item_id: str, ordinal: int) -> str:
        """The id a request line carries, and its result comes back with (unique in a run)."""
        return item_id

    @abstractmethod
    def request_line(self, custom_id: str, payload: Mapping[str, Any]) -> bytes:
        """One line of a batch's request file, newline included."""

    @abstractmethod
    def upload(self, batch: BatchFile) -> str | None:
        """Upload a request file; its file id, or None where :meth:`create` sends it inline."""

    @abstractmethod
    def create(self, batch: BatchFile, completion_window: str) -> NativeBatch:
        """Create the batch (of its uploaded file, or of its lines sent inline).

        Creating is not idempotent at every provider: the machinery records the step before
        and after, and asks :meth:`created_for` before creating again.
        """

    @abstractmethod
    def created_for(self, batch: BatchFile, since: float) -> list[NativeBatch]:
        """Batches made for ``batch`` since ``since``: a crash may have hidden one from us.

        Where the provider labels batches (an input file, a display name) that is the one
        batch so labelled; where it cannot, every batch that could be it, newest first, and
        the machinery takes the first no other batch of the task has recorded.
        """

    @abstractmethod
    def retrieve(self, batch_id: str) -> NativeBatch:
        """The batch as it is now."""

    @abstractmethod
    def download(self, file_id: str) -> bytes:
        """Result lines (JSONL) from an ``output_file_id`` or ``error_file_id``."""

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
    #: The schema every answer must follow (structured outputs); None: text answers.
    structured: Structured | None = None

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
    def check_section(cls, config: Any) -> None:
        """Refuse, at ``create``, a section this provider cannot serve (raises ConfigError)."""
        return None

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
