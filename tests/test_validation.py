"""Tests for mcpd.tools.validation: the fast check never disagrees with jsonschema."""

from __future__ import annotations

import itertools
from typing import Any

from jsonschema import Draft202012Validator
from twisted.trial.unittest import SynchronousTestCase

from mcpd.tools.validation import ArgumentValidator, HeaderParameter, compiled_check, fast_check, header_parameters

VALUES: list[Any] = ["", "x", 0, 1, -3, 1.0, 1.5, True, False, None, [], [1], {}, {"a": 1}]

SCHEMAS: list[dict[str, Any]] = [
    {"type": "object"},
    {"type": "object", "properties": {}},
    {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
    {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "number"}}},
    {"type": "object", "properties": {"a": {"type": "boolean", "description": "flag"}}, "additionalProperties": False},
    {"type": "object", "properties": {"a": {"type": ["string", "null"]}, "b": {"type": "array"}}, "required": ["b"]},
    {"type": "object", "properties": {"a": {"type": "object"}, "b": True, "c": {}}},
    {"type": "object", "properties": {"a": {"title": "anything"}}, "additionalProperties": False},
]

UNSUPPORTED: list[dict[str, Any]] = [
    {"type": "object", "properties": {"a": {"type": "string", "minLength": 2}}},
    {"type": "object", "properties": {"a": {"type": "string", "enum": ["x"]}}},
    {"type": "object", "properties": {"a": {"$ref": "#/$defs/x"}}, "$defs": {"x": {"type": "string"}}},
    {"type": "object", "additionalProperties": {"type": "string"}},
    {"type": "object", "oneOf": [{"required": ["a"]}, {"required": ["b"]}]},
    {"type": "object", "properties": {"a": {"type": "decimal"}}},
]


def argument_sets(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """Every combination of a few values for the schema's properties, plus an extra key."""
    names = [*schema.get("properties", {}), "zz"]
    sets: list[dict[str, Any]] = [{}]
    for size in (1, 2):
        for chosen in itertools.combinations(names, size):
            for values in itertools.product(VALUES, repeat=size):
                sets.append(dict(zip(chosen, values, strict=True)))
    return sets


class FastCheckTests(SynchronousTestCase):
    def test_agrees_with_jsonschema(self) -> None:
        checked = 0
        for schema in SCHEMAS:
            fast = fast_check(schema)
            self.assertIsNotNone(fast, schema)
            assert fast is not None
            reference = Draft202012Validator(schema)
            for arguments in argument_sets(schema):
                self.assertEqual(fast(arguments), reference.is_valid(arguments), (schema, arguments))
                checked += 1
        self.assertGreater(checked, 1000)

    def test_unsupported_shapes_are_left_to_jsonschema(self) -> None:
        for schema in UNSUPPORTED:
            self.assertIsNone(fast_check(schema), schema)


# Richer schemas in the subset fastjsonschema's generated code shares with Draft 2020-12.
COMPILED: list[dict[str, Any]] = [
    {"type": "object", "properties": {"a": {"type": "string", "minLength": 1, "maxLength": 3, "pattern": "^x"}}},
    {"type": "object", "properties": {"a": {"enum": ["x", ""]}, "b": {"type": "integer", "minimum": 0, "maximum": 1}}},
    {
        "type": "object",
        "properties": {
            "a": {
                "type": "array",
                "items": {"type": "object", "properties": {"b": {"type": "integer"}}, "required": ["b"]},
                "maxItems": 1,
            }
        },
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {"a": {"anyOf": [{"type": "null"}, {"type": "array", "items": {"type": "number"}}]}},
    },
    {"type": "object", "properties": {"a": {"type": ["string", "null"], "minLength": 1}}, "required": ["a"]},
]
# Outside the subset (or where a generated `in` would take True for 1): left to jsonschema.
NOT_COMPILED: list[dict[str, Any]] = [
    {"type": "object", "properties": {"a": {"enum": [1, True]}}},
    {"type": "object", "properties": {"a": {"type": "string", "format": "date"}}},
    {"type": "object", "properties": {"a": {"$ref": "#/$defs/x"}}, "$defs": {"x": {"type": "string"}}},
    {"type": "object", "properties": {"a": {"type": "array", "prefixItems": [{"type": "string"}]}}},
    {"type": "object", "properties": {"a": {"const": 1}}},
]


class CompiledCheckTests(SynchronousTestCase):
    def test_agrees_with_jsonschema(self) -> None:
        values = [*VALUES, "xy", "xyzw", "yx", [{"b": 1}], [{"b": "1"}], [{"b": 1}, {"b": 2}], [{}], [1.5, 2], ["1"]]
        checked = 0
        for schema in COMPILED:
            check = compiled_check(schema)
            self.assertIsNotNone(check, schema)
            assert check is not None
            reference = Draft202012Validator(schema)
            names = [*schema["properties"], "zz"]
            for name, value in itertools.product(names, values):
                for arguments in ({name: value}, {"a": value, name: value}):
                    self.assertEqual(check(arguments), reference.is_valid(arguments), (schema, arguments))
                    checked += 1
        self.assertGreater(checked, 300)

    def test_other_schemas_are_left_to_jsonschema(self) -> None:
        for schema in NOT_COMPILED:
            self.assertIsNone(compiled_check(schema), schema)

    def test_the_packs_records_are_compiled(self) -> None:
        from mcpd.packs import notes, tasks

        for pack in (tasks.pack, notes.pack):
            for tool in pack.tools:
                for schema in (tool.input_schema, tool.output_schema):
                    self.assertIsNotNone(fast_check(schema) or compiled_check(schema), (tool.name, schema))


class ArgumentValidatorTests(SynchronousTestCase):
    def test_valid_arguments_have_no_problems(self) -> None:
        validator = ArgumentValidator(SCHEMAS[2])
        self.assertEqual(validator.problems({"a": "text"}), [])

    def test_problems_are_worded_by_jsonschema(self) -> None:
        validator = ArgumentValidator(SCHEMAS[4])
        self.assertEqual(
            validator.problems({"a": "yes", "b": 1}),
            ["Additional properties are not allowed ('b' was unexpected)", "a: 'yes' is not of type 'boolean'"],
        )

    def test_unsupported_schema_still_validates(self) -> None:
        validator = ArgumentValidator(UNSUPPORTED[0])
        self.assertEqual(validator.problems({"a": "x"}), ["a: 'x' is too short"])
        self.assertEqual(validator.problems({"a": "xy"}), [])


class HeaderParameterTests(SynchronousTestCase):
    """2026-07-28 transports §Custom Headers: which x-mcp-header annotations are valid."""

    def test_top_level_and_nested_properties(self) -> None:
        schema = {
            "type": "object",
            "properties": {
                "region": {"type": "string", "x-mcp-header": "Region"},
                "target": {"type": "object", "properties": {"id": {"type": "integer", "x-mcp-header": "Target-Id"}}},
                "note": {"type": "string", "default": {"x-mcp-header": "NotAnAnnotation"}},
            },
        }
        self.assertEqual(
            header_parameters(schema),
            (
                HeaderParameter(("region",), "mcp-param-region", "string"),
                HeaderParameter(("target", "id"), "mcp-param-target-id", "integer"),
            ),
        )

    def test_invalid_annotations_are_refused(self) -> None:
        cases = [
            {"type": "object", "x-mcp-header": "Root"},
            {"type": "object", "properties": {"a": {"type": "number", "x-mcp-header": "A"}}},
            {"type": "object", "properties": {"a": {"type": "string", "x-mcp-header": "has space"}}},
            {"type": "object", "properties": {"a": {"type": "string", "x-mcp-header": ""}}},
            {
                "type": "object",
                "properties": {
                    "a": {"type": "string", "x-mcp-header": "Same"},
                    "b": {"type": "string", "x-mcp-header": "same"},
                },
            },
            {
                "type": "object",
                "properties": {"a": {"type": "array", "items": {"type": "string", "x-mcp-header": "I"}}},
            },
            {"type": "object", "oneOf": [{"properties": {"a": {"type": "string", "x-mcp-header": "A"}}}]},
        ]
        for schema in cases:
            self.assertRaises(ValueError, header_parameters, schema)

    def test_matching(self) -> None:
        shard = HeaderParameter(("shard",), "mcp-param-shard", "integer")
        self.assertTrue(shard.matches("42", 42))
        self.assertTrue(shard.matches("42.0", 42))
        self.assertFalse(shard.matches("43", 42))
        self.assertFalse(shard.matches("x", 42))
        # Beyond the JavaScript-safe range: no header can carry it (and float() would overflow).
        self.assertFalse(shard.matches("1", 10**400))
        flag = HeaderParameter(("flag",), "mcp-param-flag", "boolean")
        self.assertTrue(flag.matches("true", True))
        self.assertFalse(flag.matches("True", True))
        self.assertEqual(shard.value_in({"shard": 3}), 3)
        self.assertIsNone(HeaderParameter(("a", "b"), "mcp-param-b", "string").value_in({"a": "not an object"}))
