"""Tests for mcpd.tools.validation: the fast check never disagrees with jsonschema."""

from __future__ import annotations

import enum
import itertools
import json
import math
import os
import subprocess
import sys
from typing import Any

from jsonschema import Draft202012Validator, SchemaError
from twisted.trial.unittest import SynchronousTestCase

from mcpd.tools.validation import (
    ArgumentValidator,
    HeaderParameter,
    compiled_check,
    fast_check,
    header_parameters,
    well_formed,
)

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


# Schemas the 2020-12 meta-schema refuses, one keyword wrong each: `well_formed` must not pass any.
MALFORMED = [
    {"type": "strin"},
    {"type": []},
    {"type": ["string", "string"]},
    {"type": ["string", 3]},
    {"type": 3},
    {"properties": {"a": 3}},
    {"properties": []},
    {"properties": {"a": {"type": "nope"}}},
    {"items": "x"},
    {"additionalProperties": {"minLength": -1}},
    {"propertyNames": 5},
    {"anyOf": []},
    {"anyOf": {"type": "string"}},
    {"anyOf": [{"type": "string"}, 4]},
    {"required": "a"},
    {"required": ["a", "a"]},
    {"required": [1]},
    {"enum": "a"},
    {"examples": "a"},
    {"minLength": -1},
    {"maxLength": 1.5},
    {"minItems": "1"},
    {"maxProperties": -2},
    {"minimum": "1"},
    {"maximum": None},
    {"pattern": "("},
    {"pattern": 5},
    {"title": 3},
    {"description": ["x"]},
    {"$comment": 1},
    {"deprecated": "yes"},
    {"readOnly": 1},
    {"uniqueItems": 0},
]
# Well-formed schemas in the keywords `well_formed` knows (and `True`, `{}`).
WELL_FORMED = [
    True,
    {},
    {"type": ["string", "null"], "minLength": 0, "maxLength": 5.0, "pattern": "^a+$", "default": 3},
    {"type": "array", "items": {"enum": ["a", 1, None]}, "minItems": 1, "maxItems": 4, "uniqueItems": True},
    {"type": "object", "properties": {"a": {"anyOf": [{"type": "integer", "minimum": -1.5}, {"type": "null"}]}}},
    {"type": "object", "additionalProperties": False, "required": ["a"], "propertyNames": {"pattern": "^[a-z]+$"}},
    {"title": "t", "description": "d", "$comment": "c", "deprecated": False, "readOnly": True, "writeOnly": False},
    {"examples": [1, "x"], "maxProperties": 3, "minProperties": 0, "maximum": 10},
]


class WellFormedTests(SynchronousTestCase):
    """`well_formed` stands in for jsonschema's meta-schema check at declaration (issue 15):
    it may say "ask jsonschema" of a good schema, never "well formed" of a bad one."""

    def test_malformed_schemas_go_to_jsonschema(self) -> None:
        for schema in MALFORMED:
            for shape in (schema, {"type": "object", "properties": {"x": schema}}, {"items": schema}):
                self.assertFalse(well_formed(shape), shape)
                self.assertRaises(SchemaError, Draft202012Validator.check_schema, shape)

    def test_well_formed_schemas_are_valid(self) -> None:
        checked = 0
        for outer, inner in itertools.product(WELL_FORMED, WELL_FORMED):
            for shape in (
                inner,
                {"type": "object", "properties": {"x": inner, "y": outer}},
                {"anyOf": [outer, inner]},
            ):
                self.assertTrue(well_formed(shape), shape)
                Draft202012Validator.check_schema(shape)
                checked += 1
        self.assertEqual(checked, 3 * len(WELL_FORMED) ** 2)

    def test_other_keywords_go_to_jsonschema(self) -> None:
        for schema in ({"const": 1}, {"$defs": {}}, {"oneOf": [True]}, {"format": "uri"}, {"x-mcp-header": "A"}):
            self.assertFalse(well_formed(schema), schema)
        # Objects and arrays as JSON has them: a tuple is not an array to jsonschema.
        self.assertFalse(well_formed({"required": ("a",)}))

    def test_the_packs_schemas_are_well_formed(self) -> None:
        """Every schema of every built-in pack takes the fast way (and is valid)."""
        import importlib
        import pkgutil

        import mcpd.packs

        checked = 0
        for module in pkgutil.iter_modules(mcpd.packs.__path__):
            pack = getattr(importlib.import_module(f"mcpd.packs.{module.name}"), "pack", None)
            for tool in getattr(pack, "tools", ()):
                for schema in (tool.input_schema, tool.output_schema):
                    if schema is not None:
                        self.assertTrue(well_formed(schema), (tool.name, schema))
                        Draft202012Validator.check_schema(schema)
                        checked += 1
        self.assertGreater(checked, 60)


class DeclarationCostTests(SynchronousTestCase):
    def test_declaring_the_default_packs_compiles_nothing(self) -> None:
        """Loading the default packs (what ``mcpd --stdio`` does before its first answer)
        neither imports jsonschema nor generates a check: both wait for a tool's first call
        (issue 15: they were most of the start-up beyond the imports)."""
        script = (
            "import json, sys\n"
            "from mcpd.config.settings import Settings\n"
            "from mcpd.daemon import load_packs\n"
            "packs = load_packs(Settings())\n"
            "tools = [tool for pack in packs for tool in pack.tools]\n"
            "print(json.dumps([len(tools), sorted(m for m in ('jsonschema', 'fastjsonschema') if m in sys.modules)]))\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True, env=dict(os.environ)
        )
        count, imported = json.loads(out.stdout.strip().splitlines()[-1])
        self.assertGreater(count, 20)
        self.assertEqual(imported, [])

    def test_a_check_is_made_on_first_use(self) -> None:
        validator = ArgumentValidator(COMPILED[0])
        self.assertEqual(validator.problems({"a": "x"}), [])
        self.assertNotEqual(validator.problems({"a": 5}), [])


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

    def test_a_check_that_cannot_be_generated_falls_back_to_jsonschema(self) -> None:
        """fastjsonschema writes a schema's values into Python code: an enum member's repr is a
        syntax error there. jsonschema decides instead, and the failed build is not retried."""

        class Priority(enum.IntEnum):
            HIGH = 1

        schema = {"type": "object", "properties": {"p": {"minimum": 0, "maximum": 3, "default": Priority.HIGH}}}
        self.assertIsNone(compiled_check(schema))
        validator = ArgumentValidator(schema)
        for _ in range(2):
            self.assertEqual(validator.problems({"p": 1}), [])
            self.assertEqual(validator.problems({"p": 9}), ["p: 9 is greater than the maximum of 3"])
            self.assertIsNone(validator._fast)  # remembered: not generated again on the next call

    def test_a_check_that_cannot_run_falls_back_to_jsonschema(self) -> None:
        """A bound of infinity is generated as the name ``inf``: a NameError on the first call."""
        validator = ArgumentValidator({"type": "object", "properties": {"n": {"type": "number", "maximum": math.inf}}})
        for _ in range(2):
            self.assertEqual(validator.problems({"n": 5}), [])
            self.assertEqual(validator.problems({"n": "x"}), ["n: 'x' is not of type 'number'"])
            self.assertIsNone(validator._fast)

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
