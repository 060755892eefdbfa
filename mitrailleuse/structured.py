"""Structured outputs: the task's JSON Schema, answers judged against it, and re-asks.

A task with ``api_information.response_schema`` wants, for every item, a JSON object that
validates. The provider sends the schema its native way (:meth:`ChatProvider.request_body`);
every answer is then judged here, the same way live and in native batches: valid (its
``parsed`` object), or not, with a one-line problem. An invalid answer is asked again with the
problem added to the conversation, as instructor does, up to ``structured.max_reasks`` times;
the record keeps what every attempt cost.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, best_match

from mitrailleuse.providers.base import Answer
from mitrailleuse.records import ItemRef, Mode, failed, succeeded

#: Keywords whose value is a map of names to subschemas, one subschema, or a list of them.
_SCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")
_SCHEMA_ONE = (
    "items",
    "additionalProperties",
    "not",
    "contains",
    "if",
    "then",
    "else",
    "propertyNames",
    "unevaluatedProperties",
)
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")

#: How much of a validation problem goes into a record and a re-ask (instances can be long).
PROBLEM_CHARS = 300


def check_json_schema(schema: Mapping[str, Any]) -> None:
    """Refuse what is not a JSON Schema, or whose root is not an object; ValueError says why."""
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as error:
        where = "/".join(str(p) for p in error.absolute_path) or "the root"
        raise ValueError(f"not a valid JSON Schema at {where}: {error.message}") from None
    if schema.get("type") != "object":
        raise ValueError('the root must be {"type": "object"} (every provider takes an object)')


def subschemas(schema: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema nested in ``schema`` (itself first), with its JSON pointer."""
    if not isinstance(schema, dict):
        return
    yield path or "/", schema
    for key, value in schema.items():
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            for name, sub in value.items():
                yield from subschemas(sub, f"{path}/{key}/{name}")
        elif key in _SCHEMA_ONE:
            yield from subschemas(value, f"{path}/{key}")
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            for index, sub in enumerate(value):
                yield from subschemas(sub, f"{path}/{key}/{index}")


def refused_keyword(schema: Mapping[str, Any], refused: frozenset[str]) -> str | None:
    """The first keyword of ``refused`` used anywhere in the schema, with where (or None)."""
    for path, node in subschemas(dict(schema)):
        for keyword in sorted(refused & node.keys()):
            return f"{keyword!r} at {path}"
    return None


def _map_subschemas(node: dict[str, Any], change: Callable[[Any], Any]) -> dict[str, Any]:
    """A copy of ``node`` with ``change`` applied to each of its direct subschemas."""
    copy = dict(node)
    for key, value in node.items():
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            copy[key] = {name: change(sub) for name, sub in value.items()}
        elif key in _SCHEMA_ONE and isinstance(value, dict):
            copy[key] = change(value)
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            copy[key] = [change(sub) for sub in value]
    return copy


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` or null."""
    kind = schema.get("type")
    if kind == "null" or (isinstance(kind, list) and "null" in kind):
        return schema
    if any(branch.get("type") == "null" for branch in schema.get("anyOf", [])):
        return schema
    if isinstance(kind, str) and "enum" not in schema and "const" not in schema:
        return {**schema, "type": [kind, "null"]}
    if "anyOf" in schema:
        return {**schema, "anyOf": [*schema["anyOf"], {"type": "null"}]}
    return {"anyOf": [schema, {"type": "null"}]}


def _resolved(ref: str, root: dict[str, Any]) -> dict[str, Any]:
    """The subschema a local ``$ref`` (``#/$defs/Name``) points to."""
    node: Any = root
    for part in ref.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def strict_schema(schema: dict[str, Any], root: dict[str, Any] | None = None) -> dict[str, Any]:
    """The schema as OpenAI's strict mode takes it.

    Every object, nested ones too, is closed (``additionalProperties: false``) and lists all
    its properties in ``required``; one that was optional is made nullable, unless it has a
    default (the model then gives a value, as a pydantic model expects). A ``$ref`` with
    other keys beside it (pydantic's ``description`` or ``default``) is inlined: strict mode
    takes a ``$ref`` alone. A ``default`` of null is dropped.
    """
    root = schema if root is None else root
    if "$ref" in schema and len(schema) > 1:
        beside = {key: value for key, value in schema.items() if key != "$ref"}
        schema = {**_resolved(schema["$ref"], root), **beside}
    node = _map_subschemas(schema, lambda sub: strict_schema(sub, root))
    if node.get("default", 0) is None:
        del node["default"]
    kind = node.get("type")
    if kind == "object" or (isinstance(kind, list) and "object" in kind) or "properties" in node:
        properties = node.get("properties", {})
        required = set(node.get("required", []))
        node["properties"] = {
            name: sub if name in required or "default" in sub else _nullable(sub)
            for name, sub in properties.items()
        }
        node["required"] = list(properties)
        node["additionalProperties"] = False
    return node


@dataclass(frozen=True, slots=True)
class Judgement:
    """An answer judged: its object, or the problem (``error_type`` when it is final)."""

    parsed: Any = None
    problem: str | None = None
    #: Set when asking again would not help (a refusal, a truncated answer): it fails at once.
    error_type: str | None = None


def _short(text: str) -> str:
    return text if len(text) <= PROBLEM_CHARS else text[: PROBLEM_CHARS - 1] + "…"


class Structured:
    """A run's schema (as the provider sends it) and how many re-asks an item gets."""

    def __init__(self, name: str, schema: dict[str, Any], max_reasks: int) -> None:
        self.name = name
        self.schema = schema
        self.max_reasks = max_reasks
        self.validator = Draft202012Validator(schema)

    def judge(self, answer: Answer) -> Judgement:
        """Valid, or what is wrong with it, in one line."""
        if answer.refusal is not None:
            return Judgement(problem=f"the model refused: {answer.refusal}", error_type="refusal")
        if answer.truncated:
            problem = "the answer was cut at the completion token limit (raise max_tokens)"
            return Judgement(problem=problem, error_type="truncated")
        try:
            parsed = orjson.loads(answer.output)
        except orjson.JSONDecodeError as error:
            return Judgement(problem=_short(f"the answer is not valid JSON: {error}"))
        error = best_match(self.validator.iter_errors(parsed))
        if error is None:
            return Judgement(parsed=parsed)
        where = "/".join(str(p) for p in error.absolute_path) or "the root"
        return Judgement(problem=_short(f"at {where}: {error.message}"))

    def may_reask(self, item: Mapping[str, Any], judgement: Judgement) -> bool:
        """Whether an invalid answer is asked again: re-asks left, and a problem one can fix."""
        return judgement.error_type is None and reasks_of(item) < self.max_reasks


@dataclass(frozen=True, slots=True)
class Reask:
    """An item asked again in the next native batch: its added messages, its answers' cost."""

    messages: list[dict[str, Any]]
    earlier: dict[str, Any]


def reasks_of(item: Mapping[str, Any]) -> int:
    """How many times an item (as a message or a batch carries it) was asked again."""
    return len((item.get("earlier") or {}).get("costs_usd", []))


def reask_messages(output: str, problem: str) -> list[dict[str, Any]]:
    """What a re-ask adds to the conversation: the answer given, and what is wrong with it."""
    return [
        {"role": "assistant", "content": output},
        {
            "role": "user",
            "content": f"That answer does not match the required JSON Schema: {problem}. "
            "Answer again with a JSON object that matches it.",
        },
    ]


def reasked_item(
    item: Mapping[str, Any], answer: Answer, problem: str, cost: float | None
) -> dict[str, Any]:
    """An item as a message sends it again: the conversation told what was wrong."""
    request = item["request"]
    messages = [*request["messages"], *reask_messages(answer.output, problem)]
    earlier = earlier_after(item.get("earlier"), answer, cost)
    return {**item, "request": {**request, "messages": messages}, "earlier": earlier}


def first_request(item: Mapping[str, Any]) -> dict[str, Any]:
    """An asked-again item's request as first asked: without the two messages of each re-ask."""
    request = item["request"]
    return {**request, "messages": request["messages"][: -2 * reasks_of(item) or None]}


def earlier_after(earlier: Mapping[str, Any] | None, answer: Answer, cost: float | None) -> dict:
    """An item's earlier answers' costs and usage, with one more answer's."""
    earlier = earlier or {}
    usage = dict(earlier.get("usage") or {})
    for name, count in answer.usage.items():
        usage[name] = usage.get(name, 0) + count
    return {"costs_usd": [*earlier.get("costs_usd", []), cost or 0.0], "usage": usage}


def paid_before(earlier: Mapping[str, Any]) -> dict[str, Any]:
    """What a record adds for an item whose answers were asked again, then whose call failed.

    The answers were paid for (and counted in the spend as they came): the record says so.
    """
    costs = [*earlier["costs_usd"], 0.0]  # the failed call: nothing (more) to count
    return {
        "reasks": len(earlier["costs_usd"]),
        "attempt_costs_usd": costs,
        "cost_usd": sum(costs),
        "usage": dict(earlier["usage"]),
    }


def structured_record(
    item: ItemRef,
    earlier: Mapping[str, Any] | None,
    provider: str,
    model: str,
    answer: Answer,
    judgement: Judgement,
    attempts: int,
    latency_ms: int,
    mode: Mode = "realtime",
    cost_usd: float | None = None,
    cached: bool = False,
) -> dict[str, Any]:
    """The record of an item's last answer: ``parsed`` when it validates, else a failed record.

    Either way it carries ``reasks``, the cost of every answer (``attempt_costs_usd``; the
    total in ``cost_usd``) and their usage summed: a failed answer was paid for too.
    """
    spent = earlier_after(earlier, answer, cost_usd)
    if judgement.problem is None:
        record = succeeded(
            item, provider, model, answer, attempts, latency_ms, mode, cost_usd, cached
        )
    else:
        error = {
            "type": judgement.error_type or "invalid_output",
            "message": judgement.problem,
            "status_code": None,
        }
        record = failed(item, provider, model, error, attempts, latency_ms, mode)
        record["response"] = answer.response
    record.update(
        parsed=judgement.parsed,
        reasks=len(spent["costs_usd"]) - 1,
        attempt_costs_usd=spent["costs_usd"],
        cost_usd=None if cost_usd is None else sum(spent["costs_usd"]),
        usage=spent["usage"],
    )
    return record
