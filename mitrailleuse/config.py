"""Task configuration (``config/config.json``) and process environment, validated by pydantic.

The CLI and the Python API load a config file with :func:`load_config` before anything is
created or sent; the feeder and the workers read the saved copy back. The models accept the
seed's template unchanged, add ``rate_limit``, ``retry`` and ``base_url`` per provider, and keep
unknown keys (with a warning naming the closest known field) so that a newer config still loads
in an older version; ``general.strict`` or ``strict=True`` refuses them instead. The reference of
every field is ``docs/configuration.md``; ``config.schema.json`` is :func:`json_schema`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from mitrailleuse.cost.pricing import ModelPrice
from mitrailleuse.errors import ConfigError

log = logging.getLogger(__name__)

#: A name in the provider registry (``openai``, ``deepseek``, ``deepl``, ``anthropic``,
#: ``gemini``, or a plug-in's).
ProviderName = str


class Section(BaseModel):
    """Base of every config section: unknown keys are kept, and reported once."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)


class BatchConfig(Section):
    """The seed's ``batch`` block; ``is_batch_active`` asks for the provider's native batches."""

    is_batch_active: bool = False
    batch_check_time: float = Field(default=120, ge=0)
    batch_size: int = Field(default=20, ge=1, le=50_000)
    combine_batches: bool = False
    completion_window: str = "24h"


class SystemInstruction(Section):
    """A fixed system prompt, or (``is_dynamic``) the name of the item field that holds one."""

    is_dynamic: bool = False
    system_prompt: str = ""


class ChatSettings(Section):
    """A chat call's request settings, sent as given; the known ones are checked.

    Anthropic and Gemini get them under their own names where those differ.

    A value the provider would refuse (``"temperature": "hot"``) is refused at ``create``,
    naming the field, instead of failing every item at the provider. Values are not converted
    (``strict``), and settings not listed here pass through unchecked.
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True, strict=True)
    #: Not warned about as unknown keys: every setting is sent.
    passes_through: ClassVar[bool] = True

    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: int | None = Field(default=None, ge=1, le=128)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    stop: str | list[str] | None = Field(default=None, max_length=4)
    seed: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    logit_bias: dict[str, int] | None = None
    user: str | None = None
    response_format: dict[str, Any] | None = None
    #: Answers are read whole: a streamed one could not be.
    stream: Literal[False] | None = None

    @model_serializer(mode="wrap")
    def _given_only(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        given = self.model_fields_set | set(self.model_extra or {})
        return {name: value for name, value in handler(self).items() if name in given}

    def request_fields(self) -> dict[str, Any]:
        """The settings as given, for the request body."""
        return self.model_dump()


class ResponseSchema(Section):
    """The JSON Schema every answer must follow (structured outputs), and its name.

    The root must be an object (what every provider's native mechanism takes). A schema that is
    not valid JSON Schema is refused here; one a provider cannot take, at ``create``.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, serialize_by_alias=True)

    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    json_schema: dict[str, Any] = Field(alias="schema")

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        from mitrailleuse.structured import check_json_schema

        check_json_schema(value)
        return value


class ApiInformation(Section):
    """Model name and request settings passed through to the provider."""

    model: str = "gpt-4o-mini"
    setting: ChatSettings = Field(default_factory=ChatSettings)
    #: Unset: answers are text. Set: every answer is a JSON object validated against it.
    response_schema: ResponseSchema | None = None


class StructuredSettings(Section):
    """What becomes of an answer that does not validate: asked again, with the error."""

    max_reasks: int = Field(default=2, ge=0, le=10)


class RateLimit(Section):
    """Fleet-wide limits: every worker draws from the same Redis buckets.

    A budget left unset (``null``) follows the limit the provider announces in its response
    headers, up and down; until it has said, 500 requests and 200,000 tokens a minute. A budget
    set is a ceiling: the provider's word lowers it, never raises it.
    """

    requests_per_minute: int | None = Field(default=None, ge=1)
    #: ``0``: no token budget at all.
    tokens_per_minute: int | None = Field(default=None, ge=0)
    max_in_flight: int = Field(default=64, ge=1)


class RetryPolicy(Section):
    """Exponential backoff with full jitter, capped; ``Retry-After`` from the provider wins."""

    max_attempts: int = Field(default=6, ge=1, le=100)
    initial_backoff_s: float = Field(default=1.0, ge=0)
    max_backoff_s: float = Field(default=60.0, ge=0)


#: How a provider's items are sent: one call each, in the provider's native batches (half
#: price, within 24 h), or (``auto``) natively where the provider has batches, else live.
RunMode = Literal["live", "batch", "auto"]


class ProviderSection(Section):
    """What the pipeline reads of every provider's section; a provider's model extends it."""

    api_key: str = ""
    #: Unset: ``batch`` when ``batch.is_batch_active`` (the seed's switch), else ``live``.
    mode: RunMode | None = None
    batch: BatchConfig = Field(default_factory=BatchConfig)
    rate_limit: RateLimit = Field(default_factory=RateLimit)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    base_url: str | None = None
    timeout_s: float = Field(default=120.0, gt=0)

    def run_mode(self) -> RunMode:
        """The mode asked for: ``mode``, else the seed's ``batch.is_batch_active``."""
        if self.mode is not None:
            return self.mode
        return "batch" if self.batch.is_batch_active else "live"


class ChatProviderConfig(ProviderSection):
    """A chat provider's section: ``openai``, ``deepseek``; Anthropic's and Gemini's extend it."""

    prompt: str = "input_text"
    system_instruction: SystemInstruction = Field(default_factory=SystemInstruction)
    api_information: ApiInformation = Field(default_factory=ApiInformation)
    structured: StructuredSettings = Field(default_factory=StructuredSettings)
    bulk_save: int = Field(default=10, ge=1)
    sleep_time: float = Field(default=0, ge=0)

    @field_validator("prompt")
    @classmethod
    def _prompt_named(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must name the input field that holds the prompt")
        return value


class AnthropicApiInformation(ApiInformation):
    """Anthropic's default model; ``max_tokens``, required there, defaults to 1024."""

    model: str = "claude-haiku-4-5"


class AnthropicConfig(ChatProviderConfig):
    """Anthropic's Messages API."""

    api_information: AnthropicApiInformation = Field(default_factory=AnthropicApiInformation)


class GeminiApiInformation(ApiInformation):
    """Gemini's default model; ``setting`` takes OpenAI's names or Gemini's own."""

    model: str = "gemini-2.5-flash"


class GeminiConfig(ChatProviderConfig):
    """Gemini's ``generateContent``."""

    api_information: GeminiApiInformation = Field(default_factory=GeminiApiInformation)


class DeepLConfig(ProviderSection):
    """DeepL: the item fields (or literal language codes) to translate from and to."""

    target_lang: str = "target_lang"
    source_lang: str | None = None
    text: str = "text"
    formality: str | None = None
    glossary_id: str | None = None
    context: str | None = None
    preserve_formatting: bool | None = None
    tag_handling: str | None = None
    batch: BatchConfig = Field(default_factory=lambda: BatchConfig(batch_size=50))
    rate_limit: RateLimit = Field(
        default_factory=lambda: RateLimit(requests_per_minute=300, tokens_per_minute=0)
    )
    timeout_s: float = Field(default=60.0, gt=0)


class Sampling(Section):
    """Send only the first ``sample_size`` items of the run."""

    enable_sampling: bool = False
    sample_size: int = Field(default=100, ge=1)


class Logs(Section):
    """The run's log file under ``logs/``."""

    log_file: str = "log.log"
    log_to_file: bool = True
    log_to_db: bool = False
    log_buffer_size: int = Field(default=10, ge=1)

    @field_validator("log_file")
    @classmethod
    def _plain_file_name(cls, value: str) -> str:
        if not value or Path(value).name != value or value in {".", ".."}:
            raise ValueError("must be a plain file name (it is written under logs/)")
        return value


class Proxies(Section):
    """HTTP(S) proxies for every provider call (the seed's corporate proxy block).

    ``http`` serves ``http://`` endpoints and ``https`` serves ``https://`` ones; a proxy URL
    may be a ``${VAR}`` reference, resolved where the workers run (so that a proxy's password
    stays out of the task folder).
    """

    proxies_enabled: bool = False
    http: str | None = None
    https: str | None = None

    def urls(self) -> dict[str, str] | None:
        """``{"http": url, "https": url}`` (each only when set), or None when disabled."""
        if not self.proxies_enabled:
            return None
        return {scheme: url for scheme in ("http", "https") if (url := getattr(self, scheme))}


class Postgres(Section):
    """Accepted for seed compatibility; Mitrailleuse keeps its state in Redis and files."""

    host: str = "localhost"
    port: int = 5432
    username: str = "postgres"
    password: str = ""
    database: str = "mitrailleuse"


class Db(Section):
    """Accepted for seed compatibility."""

    postgres: Postgres = Field(default_factory=Postgres)


class SimilaritySettings(Section):
    """Thresholds of the similarity check."""

    similarity_threshold: float = Field(default=0.8, ge=0, le=1)
    cooldown_period: float = Field(default=300, ge=0)
    max_recent_responses: int = Field(default=100, ge=1)
    close_after_use: bool = False
    #: Ask again (after ``cooldown_period`` seconds) up to this many times when an answer is
    #: too similar to a recent one; 0 only marks the record. Every re-ask is paid for.
    reask_attempts: int = Field(default=0, ge=0, le=10)


class SimilarityCheck(Section):
    """Flag answers that are near-copies of recent ones."""

    enabled: bool = False
    settings: SimilaritySettings = Field(default_factory=SimilaritySettings)


class CacheSettings(Section):
    """The response cache: an identical request is answered from it, free and without a call.

    ``auto`` caches what gives the same answer twice: chat calls at ``temperature`` 0, and DeepL.
    """

    enabled: bool | Literal["auto"] = "auto"
    ttl_s: int = Field(default=7 * 24 * 3600, ge=1)
    #: Also keep answers in the task folder's ``cache/``, so a re-run on another machine
    #: (another Redis) still finds them.
    file: bool = True


class General(Section):
    """Settings shared by every provider."""

    verbose: bool = True
    sampling: Sampling = Field(default_factory=Sampling)
    logs: Logs = Field(default_factory=Logs)
    multiprocessing_enabled: bool = True
    num_processes: int = Field(default=10, ge=1)
    process_cap_percentage: float = Field(default=75, gt=0, le=100)
    proxies: Proxies = Field(default_factory=Proxies)
    db: Db = Field(default_factory=Db)
    similarity_check: SimilarityCheck = Field(default_factory=SimilarityCheck)
    max_items_in_flight: int = Field(default=2000, ge=1)
    #: Provider calls per Celery message, sent at once by the worker slot that runs it:
    #: Celery's cost per message is shared by them. The default holds a whole chunk at the
    #: default ``batch_size`` (20): one message per chunk.
    calls_per_message: int = Field(default=32, ge=1, le=100)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    #: Stop dispatching before the run's spend (with calls in flight at their worst case)
    #: would pass this many US dollars; ``execute`` again with a higher limit goes on.
    cost_limit_usd: float | None = Field(default=None, gt=0)
    #: Price overrides, ``{"openai": {"gpt-4o": {"input_per_mtok": 2.5, ...}}}``; the shipped
    #: table is ``mitrailleuse/cost/prices.json``.
    prices: dict[str, dict[str, ModelPrice]] = Field(default_factory=dict)
    #: Refuse unknown keys (a typo would otherwise only be warned about, and have no effect).
    strict: bool = False


class TaskConfig(Section):
    """The whole ``config.json`` of a task."""

    task_name: str = "task"
    user_id: str = "user"
    openai: ChatProviderConfig = Field(default_factory=ChatProviderConfig)
    deepseek: ChatProviderConfig = Field(
        default_factory=lambda: ChatProviderConfig(
            api_information=ApiInformation(model="deepseek-chat"),
        )
    )
    deepl: DeepLConfig = Field(default_factory=DeepLConfig)
    anthropic: AnthropicConfig = Field(default_factory=AnthropicConfig)
    gemini: GeminiConfig = Field(default_factory=GeminiConfig)
    general: General = Field(default_factory=General)

    def provider(self, name: ProviderName) -> ProviderSection:
        """The section of one provider: a built-in one, or a plug-in's, validated by its model.

        A plug-in provider's section is an unknown key to this model; its provider class names
        the model that validates it (``Provider.config_model``).
        """
        if name in type(self).model_fields:
            return getattr(self, name)
        from mitrailleuse.providers import provider_class

        extra = self.model_extra if self.model_extra is not None else {}
        section = extra.get(name) or {}
        if not isinstance(section, BaseModel):
            try:
                section = provider_class(name).config_model.model_validate(section)
            except ValidationError as error:
                raise ConfigError(error_line(error.errors(), f"config: {name}")) from None
            extra[name] = section
        return section


class Environment(BaseSettings):
    """The process environment Mitrailleuse reads (README, "Environment").

    Read here, under their own names: what a provider's key, endpoint or limit override is
    called depends on the provider, so those are read by ``credentials``, the provider
    (``base_url_variable``) and ``Limits.resolve``.
    """

    model_config = SettingsConfigDict(extra="ignore")

    redis_url: str | None = None
    mitrailleuse_tasks_dir: Path = Path("tasks")
    #: Seconds before a message nobody acknowledged is delivered again (the last resort).
    mitrailleuse_visibility_timeout_s: int = Field(default=3600, ge=60)
    #: Message slots (threads) per worker process.
    mitrailleuse_concurrency: int = Field(default=64, ge=1)
    #: Task events on without Flower watching.
    mitrailleuse_task_events: bool = False
    #: How often beat polls the native batches.
    mitrailleuse_batch_poll_s: float = Field(default=5.0, gt=0)
    #: How workers and beat write their log lines: ``text`` for people, ``json`` for shippers.
    mitrailleuse_log_format: Literal["text", "json"] = "text"
    #: The module the Celery app takes its settings from (a deployment's own, or ours).
    mitrailleuse_celery_config: str = "mitrailleuse.celeryconfig"
    #: The largest request body the HTTP API takes (a task's items and input files), in MB.
    mitrailleuse_http_max_upload_mb: int = Field(default=100, ge=1)
    #: What one user's chat sessions may spend in a UTC day, in US dollars (unset: no limit);
    #: read by the workers, which reserve each call's worst case before making it.
    mitrailleuse_chat_budget_usd: float | None = Field(default=None, gt=0)
    #: ``user:password[,user2:password2]`` for Flower.
    flower_basic_auth: str = ""
    #: DeepL's endpoint when the config has no ``base_url`` (the DeepL SDK's own variable name).
    deepl_server_url: str | None = None

    @field_validator("redis_url")
    @classmethod
    def _empty_is_unset(cls, value: str | None) -> str | None:
        return value.strip() or None if value else None


#: The most of a refused value an error line shows.
_SHOWN_CHARS = 80


def error_field(error: Mapping[str, Any]) -> str:
    """The dotted field a pydantic error is about (``openai.retry.max_attempts``)."""
    return ".".join(str(part) for part in error["loc"]) or "(top level)"


def error_line(errors: Sequence[Mapping[str, Any]], source: str) -> str:
    """Pydantic's errors as one line: the first one's field, message and value, and the count.

    The one-line ConfigError of a bad config; the HTTP API says a malformed request this way.
    """
    first = errors[0]
    value = first.get("input")
    shown = repr(value) if isinstance(value, str | int | float | bool) or value is None else ""
    if len(shown) > _SHOWN_CHARS:  # a whole request body, say: its start is enough
        shown = shown[: _SHOWN_CHARS - 3] + "..."
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    said = first["msg"].removeprefix("Value error, ")  # a validator's own words
    return f"{source}: {error_field(first)}: {said}{': got ' + shown if shown else ''}{more}"


#: Seed settings accepted for compatibility that change nothing here, and why.
WITHOUT_EFFECT = {
    "general.verbose": "the CLI always shows progress",
    "general.multiprocessing_enabled": "workers set their concurrency with worker -c",
    "general.num_processes": "workers set their concurrency with worker -c",
    "general.process_cap_percentage": "workers set their concurrency with worker -c",
    "general.logs.log_to_db": "the run log is a file under logs/",
    "general.logs.log_buffer_size": "each log line is written at once",
    "general.db": "state lives in Redis and the task folder",
    "general.similarity_check.settings.close_after_use": "nothing to close",
    "*.bulk_save": "records are saved as each call ends",
    "*.sleep_time": "the rate_limit block paces calls",
}


def without_effect(config: TaskConfig) -> list[str]:
    """The settings of :data:`WITHOUT_EFFECT` a config gives (``name (why)``), in order."""
    found = []
    for path, why in WITHOUT_EFFECT.items():
        head, _, rest = path.partition(".")
        sections = [*type(config).model_fields, *(config.model_extra or {})]
        if head != "*":
            sections = [head]
        for section in sections:
            if _given(config, [section, *rest.split(".")]):
                found.append(f"{section}.{rest} ({why})")
    return found


def _given(model: Any, path: list[str]) -> bool:
    for name in path:
        if not isinstance(model, BaseModel) or name not in model.model_fields_set:
            return False
        model = getattr(model, name)
    return True


#: How alike (rapidfuzz ``ratio``, 0-100) an unknown key and a field must be to be suggested:
#: ``batchsize`` is ``batch_size`` (95) and not ``batch`` (71).
_CLOSE_ENOUGH = 80


def _unknown_keys(model: BaseModel, prefix: str = "") -> list[str]:
    """Each unknown key of ``model`` and its sections, with the field it was likely meant to be.

    A plug-in provider's section is an unknown key to :class:`TaskConfig` but not a mistake:
    its provider's model validates it (:meth:`TaskConfig.provider`).
    """
    if getattr(model, "passes_through", False):
        return []
    extra = list(model.model_extra or {})
    if isinstance(model, TaskConfig) and extra:
        from mitrailleuse.providers import available_providers

        extra = [key for key in extra if key not in available_providers()]
    found = []
    for key in extra:
        meant = _closest_field(type(model), key)
        hint = f" (did you mean {prefix}{meant}?)" if meant else ""
        found.append(f"unknown key {prefix}{key}{hint}")
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            found += _unknown_keys(value, f"{prefix}{name}.")
    return found


def _closest_field(model: type[BaseModel], key: str) -> str | None:
    """The field ``key`` was likely meant to be (a dotted path when nested).

    A nested field of exactly that name first (``openai.model`` is
    ``openai.api_information.model``, not ``openai.mode``), else the closest in the same
    section, else the closest nested one.
    """
    from rapidfuzz import fuzz, process  # imported only for a config with a typo

    nested = _nested_fields(model)
    exact = [path for path in nested if path.rpartition(".")[2].lower() == key.lower()]
    if exact:
        return min(exact, key=len)
    for paths in (list(model.model_fields), nested):
        names = {path: path.rpartition(".")[2] for path in paths}
        match = process.extractOne(
            key, names, scorer=fuzz.ratio, processor=str.lower, score_cutoff=_CLOSE_ENOUGH
        )
        if match:
            return match[2]
    return None


def _nested_fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    """The dotted paths of the fields of every section nested in ``model``, at any depth."""
    paths = []
    for name, field in model.model_fields.items():
        section = field.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            paths += [f"{prefix}{name}.{sub}" for sub in section.model_fields]
            paths += _nested_fields(section, f"{prefix}{name}.")
    return paths


def parse_config(data: Any, source: str = "config", strict: bool = False) -> TaskConfig:
    """Validate a config mapping; a bad value raises ConfigError naming the field.

    Unknown keys are warned about, or refused with ``strict`` (or ``general.strict``).
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: must be a JSON object, got {type(data).__name__}")
    try:
        config = TaskConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(error_line(error.errors(), source)) from None
    unknown = _unknown_keys(config)
    if unknown and (strict or config.general.strict):
        raise ConfigError(f"{source}: {'; '.join(unknown)}; strict mode refuses unknown keys")
    for line in unknown:
        log.warning("%s: %s", source, line)
    return config


def load_config(path: Path, strict: bool = False) -> TaskConfig:
    """Read and validate a config file (``strict``: refuse unknown keys)."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read config: {error.strerror}") from None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise ConfigError(f"{path}: not valid JSON: {error}") from None
    return parse_config(data, str(path), strict)


def set_response_model(config: TaskConfig, provider: ProviderName, model: type[BaseModel]) -> None:
    """Make ``model``'s JSON Schema the provider's response schema (structured outputs)."""
    information = getattr(config.provider(provider), "api_information", None)
    if information is None:
        raise ConfigError(f"{provider} has no structured outputs: response_model is for chat APIs")
    schema = {"name": model.__name__, "schema": model.model_json_schema()}
    try:
        information.response_schema = ResponseSchema.model_validate(schema)
    except ValidationError as error:
        raise ConfigError(error_line(error.errors(), f"response_model {model.__name__}")) from None


def json_schema() -> dict[str, Any]:
    """The JSON Schema of ``config.json``, as shipped in ``mitrailleuse/config.schema.json``."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **TaskConfig.model_json_schema(),
    }
