"""Answers that follow a JSON Schema: the structured outputs of every simulated API.

:func:`answer_object` builds a value valid against a schema, deterministic given the schema and
the prompt: its strings are made of the prompt's words and its numbers drawn from its checksum,
so two items get different answers and a re-ask of one item the same. :func:`invalid_object`
builds one that breaks the schema. :func:`reply` decides what a request gets, from the markers
of the item's first user message (each API renders the :class:`Reply` in its own shape):

* ``[[schema-invalid]]``: always an answer that breaks the schema.
* ``[[schema-invalid-once]]``: the same, unless the conversation already holds an answer of the
  model (an assistant / model message: a re-ask), which then gets a valid one. Unlike the
  generic ``[[name-once]]`` markers this keeps no state, so it acts alike live and in batches.
* ``[[refusal]]``: the model refuses (:data:`REFUSAL`), structured request or not.
* ``[[length]]``: the answer is cut in half, as when the output tokens run out.

Schema keywords followed: ``type`` (a list of types: the first not null), ``enum``, ``const``,
``properties`` (all filled) and ``required``, ``additionalProperties`` (no property beyond the
listed ones), ``items`` / ``prefixItems`` / ``minItems`` / ``maxItems`` (one item unless they
say otherwise), ``anyOf`` / ``oneOf`` (the first branch not null), ``allOf`` (merged), local
``$ref`` (``#/$defs/X``, ``#/definitions/X``, any ``#/...`` pointer), ``minimum`` /
``maximum`` / ``exclusiveMinimum`` / ``exclusiveMaximum``, ``minLength`` / ``maxLength`` and
the common ``format`` values. Ignored, so an answer may break them: ``pattern``,
``multipleOf``, ``uniqueItems``, ``patternProperties``, ``not``, ``if`` / ``then`` / ``else``,
``contains``, ``minProperties`` and ``oneOf`` branches that overlap. Past :data:`MAX_DEPTH`
levels a recursive schema gets only what it requires (a null branch when there is one, no
optional property, ``minItems`` items), so that it ends.
"""

from __future__ import annotations

import math
import re
import uuid
import zlib
from dataclasses import dataclass
from typing import Any

import orjson

from mitrailleuse.simulator.app import parse_markers

REFUSAL = "I'm sorry, I can't help with that."
"""What a model says when it refuses (``[[refusal]]``)."""

MAX_DEPTH = 6
"""Nesting past which a value gets only what its schema requires (recursive schemas end)."""

GIVE_UP_DEPTH = 4 * MAX_DEPTH
"""Nesting at which a schema that requires endless nesting gets ``null``."""

MAX_REF_HOPS = 64
"""``$ref`` / ``allOf`` steps followed before a schema is taken as "anything"."""

_MARKERS_RE = re.compile(r"\[\[[^\]]*\]\]")
_WORD_RE = re.compile(r"\w+")
_WORDS_PER_STRING = 4
_FIXED_FORMATS = {  # What a ``format`` keyword gets: one value each, or one made of a word.
    "date": "2026-01-01",
    "date-time": "2026-01-01T00:00:00Z",
    "time": "00:00:00Z",
    "duration": "P1D",
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
}
_WORD_FORMATS = {
    "email": "{}@example.com",
    "uri": "https://example.com/{}",
    "hostname": "{}.example.com",
}
_WRONG_VALUES: tuple[tuple[str, Any], ...] = (
    ("string", "not the expected type"),
    ("integer", 12345),
    ("array", []),
    ("object", {}),
    ("boolean", True),
)
"""Candidates of :func:`invalid_object` for a property: the first of a type it refuses."""


@dataclass(frozen=True, slots=True)
class Reply:
    """What the model sends back: its text and why it stopped.

    ``ending`` is ``"stop"``, ``"refusal"`` (``text`` is :data:`REFUSAL`) or ``"length"``
    (``text`` is cut in half). ``value`` is the object a structured answer's ``text`` holds
    (Anthropic sends it as the tool's input), ``{}`` when it is cut, ``None`` for plain text.
    """

    text: str
    ending: str = "stop"
    value: Any = None


def reply(answer: str, prompt: str, reasked: bool, schema: dict[str, Any] | None) -> Reply:
    """The model's answer to a request: ``answer`` (plain text) or an object following ``schema``.

    ``prompt`` is the item's first user text, whose markers decide (see the module's doc) and
    whose words fill the object's strings; ``reasked`` says the conversation already holds an
    answer of the model.
    """
    markers = parse_markers(prompt) or {}
    if "refusal" in markers:
        return Reply(REFUSAL, "refusal")
    value = None
    if schema is not None:
        broken = "schema-invalid" in markers or ("schema-invalid-once" in markers and not reasked)
        value = (invalid_object if broken else answer_object)(schema, prompt)
        answer = orjson.dumps(value).decode()
    if "length" in markers:
        return Reply(answer[: len(answer) // 2], "length", None if schema is None else {})
    return Reply(answer, "stop", value)


def answer_object(schema: dict[str, Any], prompt: str) -> Any:
    """A value valid against ``schema`` (within the keywords the module's doc lists)."""
    return _Builder(schema, prompt).value(schema)


def invalid_object(schema: dict[str, Any], prompt: str) -> Any:
    """A value ``schema`` refuses, built from the valid one.

    The first required property is left out; with none required, the first property that
    refuses some type gets a value of that type; with no such property, the answer is a JSON
    array (holding the valid object). A root that is not an object gets a value of a type it
    refuses (a schema accepting anything keeps its valid value).
    """
    builder = _Builder(schema, prompt)
    root = builder.resolve(schema)
    value = builder.value(root)
    if not isinstance(value, dict) or not isinstance(root, dict):
        return builder.wrong(root, value)
    required = [name for name in root.get("required") or () if name in value]
    if required:
        del value[required[0]]
        return value
    for name, sub in (root.get("properties") or {}).items():
        wrong = builder.wrong(sub, value)
        if wrong is not value:
            value[name] = wrong
            return value
    return [value]


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Both schemas at once: ``extra``'s keywords win, but properties and required add up."""
    merged = {**base, **extra}
    if "properties" in base and "properties" in extra:
        properties = dict(base["properties"])
        for name, sub in extra["properties"].items():
            properties[name] = {"allOf": [properties[name], sub]} if name in properties else sub
        merged["properties"] = properties
    if "required" in base and "required" in extra:
        merged["required"] = [*base["required"], *extra["required"]]
    return merged


def _kind(schema: Any) -> str:
    """The JSON type to answer with: the first ``type`` not null, or what the keywords imply.

    Types are read case-blind: Gemini's ``responseSchema`` spells them ``"OBJECT"``.
    """
    if not isinstance(schema, dict):
        return "string"
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if str(k).lower() != "null"), "null")
    if isinstance(kind, str):
        return kind.lower()
    if "properties" in schema or "required" in schema or "additionalProperties" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema or "minItems" in schema:
        return "array"
    if any(key in schema for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")):
        return "number"
    return "string"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), "object")


def _bound(schema: dict[str, Any], key: str) -> float | None:
    value = schema.get(key)
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _number(guess: int, schema: dict[str, Any], integer: bool) -> int | float:
    """``guess`` (``guess + 0.5`` for a number), or a value within the schema's bounds."""
    low, high = _bound(schema, "minimum"), _bound(schema, "maximum")
    above, below = _bound(schema, "exclusiveMinimum"), _bound(schema, "exclusiveMaximum")
    if integer:
        floors = [math.ceil(low)] if low is not None else []
        floors += [math.floor(above) + 1] if above is not None else []
        ceilings = [math.floor(high)] if high is not None else []
        ceilings += [math.ceil(below) - 1] if below is not None else []
        value = max([guess, *floors])
        return min([value, *ceilings])
    lower = max((b for b in (low, above) if b is not None), default=-math.inf)
    upper = min((b for b in (high, below) if b is not None), default=math.inf)
    value = guess + 0.5
    fits = (low is None or value >= low) and (high is None or value <= high)
    if fits and (above is None or value > above) and (below is None or value < below):
        return value
    if math.isfinite(lower) and math.isfinite(upper):
        return (lower + upper) / 2
    return lower + 1 if math.isfinite(lower) else upper - 1


class _Builder:
    """Builds the values of one (schema, prompt) pair."""

    def __init__(self, root: Any, prompt: str) -> None:
        self.root = root
        self.prompt = prompt
        self.words = _WORD_RE.findall(_MARKERS_RE.sub(" ", prompt)) or ["answer"]
        self.seed = zlib.crc32(prompt.encode())
        self.made = 0  # scalars made so far: each starts from another word or number

    # -- schemas ---------------------------------------------------------------------------

    def _target(self, ref: Any) -> Any:
        """The schema a local ``$ref`` points to; any other ``$ref`` allows anything."""
        if not isinstance(ref, str) or not ref.startswith("#"):
            return {}
        node = self.root
        try:
            for token in ref[1:].split("/")[1:]:
                token = token.replace("~1", "/").replace("~0", "~")
                node = node[int(token)] if isinstance(node, list) else node[token]
        except (KeyError, IndexError, TypeError, ValueError):
            return {}
        return node if isinstance(node, dict) or node is False else {}

    def resolve(self, schema: Any) -> Any:
        """``schema`` with its ``$ref`` followed and its ``allOf`` merged in."""
        for _ in range(MAX_REF_HOPS):
            if not isinstance(schema, dict):
                return schema
            if "$ref" in schema:
                target = self._target(schema["$ref"])
                siblings = {key: sub for key, sub in schema.items() if key != "$ref"}
                schema = _merge(target, siblings) if siblings and target is not False else target
            elif "allOf" in schema:
                merged = {key: sub for key, sub in schema.items() if key != "allOf"}
                for part in schema["allOf"]:
                    part = self.resolve(part)
                    merged = _merge(merged, part) if isinstance(part, dict) else merged
                schema = merged
            else:
                return schema
        return {}

    def _branch(self, branches: list[Any], depth: int) -> Any:
        """The first branch that is not only null; past :data:`MAX_DEPTH`, a null one."""
        null = [branch for branch in branches if _kind(self.resolve(branch)) == "null"]
        if null and depth >= MAX_DEPTH:
            return null[0]
        return next((branch for branch in branches if branch not in null), branches[0])

    # -- values ----------------------------------------------------------------------------

    def value(self, schema: Any, depth: int = 0) -> Any:
        """A value valid against ``schema``, ``depth`` levels down the answer."""
        schema = self.resolve(schema)
        if depth >= GIVE_UP_DEPTH:
            return None
        if not isinstance(schema, dict):  # true, or false (that nothing satisfies)
            schema = {}
        if "const" in schema:
            return schema["const"]
        if schema.get("enum"):
            choices = [choice for choice in schema["enum"] if choice is not None] or [None]
            return choices[self.seed % len(choices)]
        branches = schema.get("anyOf") or schema.get("oneOf")
        if isinstance(branches, list) and branches:
            rest = {key: sub for key, sub in schema.items() if key not in ("anyOf", "oneOf")}
            branch = self.resolve(self._branch(branches, depth))
            return self.value(_merge(rest, branch) if isinstance(branch, dict) else branch, depth)
        kind = _kind(schema)
        if kind == "object":
            return self._object(schema, depth)
        if kind == "array":
            return self._array(schema, depth)
        if kind == "null":
            return None
        turn, self.made = self.made, self.made + 1
        if kind == "boolean":
            return (self.seed + turn) % 2 == 0
        if kind in ("integer", "number"):
            return _number(1 + (self.seed + turn) % 100, schema, kind == "integer")
        return self._string(schema, turn)

    def _object(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        properties = schema.get("properties") or {}
        required = [name for name in schema.get("required") or () if isinstance(name, str)]
        lean = depth >= MAX_DEPTH
        names = [name for name in properties if not lean or name in required]
        names += [name for name in required if name not in properties]
        extra = schema.get("additionalProperties")
        result: dict[str, Any] = {}
        for name in names:
            sub = properties.get(name, extra if isinstance(extra, dict) else {})
            if sub is not False:
                result[name] = self.value(sub, depth + 1)
        return result

    def _array(self, schema: dict[str, Any], depth: int) -> list[Any]:
        prefix, items = schema.get("prefixItems") or [], schema.get("items", {})
        if isinstance(items, list):  # The tuple form of drafts before 2020-12.
            prefix, items = items, schema.get("additionalItems", {})
        low, high = schema.get("minItems", 0), schema.get("maxItems")
        wanted = low if depth >= MAX_DEPTH else max(low, 1)
        wanted = wanted if high is None else min(wanted, high)
        values: list[Any] = []
        for index in range(wanted):
            sub = prefix[index] if index < len(prefix) else items
            if sub is False:
                break
            values.append(self.value(sub, depth + 1))
        return values

    def _string(self, schema: dict[str, Any], turn: int) -> str:
        """Words of the prompt (the ``turn``-th string from its ``turn``-th word), or a format's."""
        start = turn % len(self.words)
        fmt = str(schema.get("format"))
        if fmt in _FIXED_FORMATS:
            return _FIXED_FORMATS[fmt]
        if fmt in _WORD_FORMATS:
            slug = re.sub(r"[^a-z0-9]", "", self.words[start].lower()) or "item"
            return _WORD_FORMATS[fmt].format(slug)
        if fmt == "uuid":
            return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{self.prompt}\0{turn}"))
        text = " ".join((self.words[start:] + self.words[:start])[:_WORDS_PER_STRING])
        low, high = schema.get("minLength", 0), schema.get("maxLength")
        if len(text) < low:
            text = " ".join([text] * (low // len(text) + 1))
        return text if high is None else text[:high]

    def wrong(self, schema: Any, valid: Any) -> Any:
        """A value of a type ``schema`` refuses, or ``valid`` when it takes every type."""
        accepted = self._types(schema)
        if accepted is None:
            return valid
        if "number" in accepted:
            accepted.add("integer")
        return next((value for kind, value in _WRONG_VALUES if kind not in accepted), valid)

    def _types(self, schema: Any) -> set[str] | None:
        """The JSON types ``schema`` accepts (``None``: all)."""
        schema = self.resolve(schema)
        if not isinstance(schema, dict):
            return None if schema is not False else set()
        if "const" in schema:
            return {_json_type(schema["const"])}
        if "enum" in schema:
            return {_json_type(choice) for choice in schema["enum"]}
        branches = schema.get("anyOf") or schema.get("oneOf")
        if isinstance(branches, list) and branches:
            found: set[str] = set()
            for branch in branches:
                kinds = self._types(branch)
                if kinds is None:
                    return None
                found |= kinds
            return found
        kind = schema.get("type")
        if kind is None:
            return None
        return {str(k).lower() for k in (kind if isinstance(kind, list) else [kind])}
