"""The schema's shapes and the judging of answers, alone (the e2e tests run them for real)."""

from __future__ import annotations

import pytest
from jsonschema import Draft202012Validator
from pydantic import BaseModel, Field

from mitrailleuse.providers.base import Answer
from mitrailleuse.records import new_spend
from mitrailleuse.structured import (
    Structured,
    check_json_schema,
    first_request,
    paid_before,
    reasked_item,
    strict_schema,
)


class Leaf(BaseModel):
    label: str
    weight: float | None = None


class Tree(BaseModel):
    name: str
    leaves: list[Leaf]
    parent: Leaf | None = None
    note: str = ""
    root: Leaf = Field(description="where it grows")  # pydantic: a $ref with a sibling


def objects(schema):
    """Every object schema in ``schema``."""
    if isinstance(schema, dict):
        if schema.get("type") == "object":
            yield schema
        for value in schema.values():
            yield from objects(value)
    elif isinstance(schema, list):
        for value in schema:
            yield from objects(value)


def test_strict_mode_closes_every_object_nested_ones_too():
    """batchata closes the top level only; nested models then fail at OpenAI."""
    strict = strict_schema(Tree.model_json_schema())
    found = list(objects(strict))
    assert len(found) == 3  # Tree, Leaf under $defs, and Leaf inlined under root
    for node in found:
        assert node["additionalProperties"] is False
        assert node["required"] == list(node["properties"])
    leaf = strict["$defs"]["Leaf"]["properties"]
    assert leaf["weight"] == {"anyOf": [{"type": "number"}, {"type": "null"}], "title": "Weight"}
    # a default: required, not nullable (the model gives a value a pydantic model takes)
    assert strict["properties"]["note"] == {"default": "", "title": "Note", "type": "string"}
    # strict mode takes a $ref alone: one with a sibling is inlined
    assert strict["properties"]["root"]["description"] == "where it grows"
    assert "$ref" not in strict["properties"]["root"]
    assert strict["properties"]["root"]["additionalProperties"] is False
    Draft202012Validator.check_schema(strict)
    leaf = {"label": "a", "weight": None}
    valid = {"name": "t", "leaves": [leaf], "parent": None, "note": "", "root": leaf}
    assert Draft202012Validator(strict).is_valid(valid)
    assert Tree.model_validate(valid)
    assert not Draft202012Validator(strict).is_valid({**valid, "extra": 1})
    assert not Draft202012Validator(strict).is_valid({**valid, "note": None})
    # an optional property without a default, in a hand-written schema: nullable
    given = {"type": "object", "properties": {"nick": {"type": "string"}}}
    assert strict_schema(given)["properties"]["nick"] == {"type": ["string", "null"]}


@pytest.mark.parametrize(
    ("schema", "said"),
    [
        ({"type": "array"}, "the root must be"),
        ({"type": "object", "properties": {"a": {"type": "strin"}}}, "at properties/a/type"),
        ({"type": "object", "required": "a"}, "at required"),
    ],
)
def test_a_schema_that_is_not_one_is_refused_in_one_line(schema, said):
    with pytest.raises(ValueError, match=said) as refused:
        check_json_schema(schema)
    assert "\n" not in str(refused.value)


def test_answers_are_judged_with_a_one_line_problem():
    structured = Structured("tree", strict_schema(Tree.model_json_schema()), max_reasks=2)
    leaf = '{"label": "a", "weight": null}'
    valid = f'{{"name": "t", "leaves": [], "parent": null, "note": "", "root": {leaf}}}'
    assert structured.judge(Answer(valid, {})).parsed["name"] == "t"
    assert "not valid JSON" in structured.judge(Answer("{'name'", {})).problem
    missing = structured.judge(Answer(valid.replace('"leaves": [], ', ""), {}))
    assert missing.problem == "at the root: 'leaves' is a required property"
    nested = valid.replace('"leaves": []', '"leaves": [{"label": 3, "weight": null}]')
    assert (
        structured.judge(Answer(nested, {})).problem
        == "at leaves/0/label: 3 is not of type 'string'"
    )
    cut = structured.judge(Answer('{"name": "t", "lea', {}, truncated=True))
    assert cut.error_type == "truncated" and not structured.may_reask({}, cut)
    refused = structured.judge(Answer("I can't", {}, refusal="I can't"))
    assert refused.error_type == "refusal" and not structured.may_reask({}, refused)


def test_a_reask_adds_two_messages_and_remembers_what_was_paid():
    item = {"id": "a", "ordinal": 0, "request": {"messages": [{"role": "user", "content": "q"}]}}
    once = reasked_item(item, Answer("{}", {}, {"prompt_tokens": 5}), "at the root: x", 0.25)
    twice = reasked_item(once, Answer("[]", {}, {"prompt_tokens": 7}), "at the root: y", 0.5)
    roles = [m["role"] for m in twice["request"]["messages"]]
    assert roles == ["user", "assistant", "user", "assistant", "user"]
    assert twice["earlier"] == {"costs_usd": [0.25, 0.5], "usage": {"prompt_tokens": 12}}
    assert first_request(twice) == item["request"] and first_request(item) == item["request"]
    # a re-asked item whose call then failed: its record says what was paid, counted once
    record = paid_before(twice["earlier"])
    assert (record["reasks"], record["cost_usd"], new_spend(record)) == (2, 0.75, 0.0)
