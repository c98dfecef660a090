# -*- test-case-name: tests.test_validation -*-
"""Argument validation against a tool's input schema, fast for the common shapes.

jsonschema is the authority and words every error message. Most tool schemas, though, are a flat
object of typed properties; for those a precompiled check decides "valid" in a fraction of
jsonschema's time (it was 15% of a whole tools/call), and only an invalid call pays for
jsonschema's full report. Richer schemas written in a common subset of keywords (nested objects
and arrays, enums of strings, string and number bounds: the data packs' records) are checked by
code fastjsonschema generates (jsonschema took 45% of a task.list call checking its output).
A schema using anything else is validated by jsonschema alone.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator

# Keywords that describe without constraining: the fast check may ignore them.
_ANNOTATIONS = frozenset(
    {"title", "description", "default", "examples", "deprecated", "readOnly", "writeOnly", "$comment"}
)
_OBJECT_KEYWORDS = _ANNOTATIONS | {"type", "properties", "required", "additionalProperties"}
_PROPERTY_KEYWORDS = _ANNOTATIONS | {"type"}


def _is_integer(value: Any) -> bool:
    # JSON Schema: an integer is a number with a zero fractional part (1.0 counts).
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


_TYPE_CHECKS: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "integer": _is_integer,
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "null": lambda v: v is None,
}

Check = Callable[[dict[str, Any]], bool]


def _property_check(schema: Any) -> Callable[[Any], bool] | None:
    if schema is True or schema == {}:
        return lambda _value: True
    if not isinstance(schema, Mapping) or not set(schema) <= _PROPERTY_KEYWORDS:
        return None
    kind = schema.get("type")
    if kind is None:
        return lambda _value: True
    if isinstance(kind, str):
        return _TYPE_CHECKS.get(kind)
    if isinstance(kind, list) and kind and all(isinstance(k, str) and k in _TYPE_CHECKS for k in kind):
        checks = [_TYPE_CHECKS[k] for k in kind]
        return lambda value: any(check(value) for check in checks)
    return None


def fast_check(schema: Mapping[str, Any]) -> Check | None:
    """A check that answers True only for arguments jsonschema would accept, or None when the
    schema has a shape it does not cover."""
    if not set(schema) <= _OBJECT_KEYWORDS or schema.get("type") != "object":
        return None
    properties = schema.get("properties", {})
    required = schema.get("required", [])
    additional = schema.get("additionalProperties", True)
    if not isinstance(properties, Mapping) or not isinstance(required, list) or not isinstance(additional, bool):
        return None
    checks: dict[str, Callable[[Any], bool]] = {}
    for name, subschema in properties.items():
        check = _property_check(subschema)
        if check is None:
            return None
        checks[name] = check
    required_names = tuple(required)

    def accepts(arguments: Any) -> bool:
        if not isinstance(arguments, dict):
            return False  # structured output may be any JSON value: jsonschema decides
        for name in required_names:
            if name not in arguments:
                return False
        for name, value in arguments.items():
            check = checks.get(name)
            if check is None:
                if not additional:
                    return False
            elif not check(value):
                return False
        return True

    return accepts


# Keywords whose meaning fastjsonschema's generated code shares with Draft 2020-12 exactly.
_COMPILED_KEYWORDS = _ANNOTATIONS | {
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "anyOf",
    "minLength",
    "maxLength",
    "pattern",
    "minimum",
    "maximum",
    "minItems",
    "maxItems",
}


def _compilable(schema: Any) -> bool:
    """Whether ``schema`` keeps to `_COMPILED_KEYWORDS` (and enums of strings, where ``in``
    cannot confuse True with 1 as a generated check would)."""
    if isinstance(schema, bool):
        return True
    if not isinstance(schema, Mapping) or not set(schema) <= _COMPILED_KEYWORDS:
        return False
    for keyword, value in schema.items():
        if keyword == "properties":
            if not isinstance(value, Mapping) or not all(_compilable(sub) for sub in value.values()):
                return False
        elif keyword in ("items", "additionalProperties"):
            if not _compilable(value):
                return False
        elif keyword == "anyOf":
            if not isinstance(value, list) or not all(_compilable(sub) for sub in value):
                return False
        elif keyword == "enum" and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            return False
    return True


_SIMPLE_TYPES = frozenset(_TYPE_CHECKS)
_COUNTS = frozenset({"minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties"})
_TEXTS = frozenset({"title", "description", "$comment"})
_FLAGS = frozenset({"deprecated", "readOnly", "writeOnly", "uniqueItems"})


def well_formed(schema: Any) -> bool:
    """True only for a schema the Draft 2020-12 meta-schema accepts (`check_schema`), written
    in the keywords tool schemas use (`_COMPILED_KEYWORDS`, ``uniqueItems``, ``propertyNames``,
    ``minProperties``, ``maxProperties``); False means "ask jsonschema", which decides and
    words the error.

    jsonschema's check walks the meta-schema's dynamic references: ~60 ms a pack, most of
    ``mcpd --stdio``'s start-up with the default packs (issue 15). Each keyword here is held
    to what the meta-schema asks of it (JSON types as jsonschema tells them: dict, list, str)."""
    if isinstance(schema, bool):
        return True
    if type(schema) is not dict:
        return False
    for keyword, value in schema.items():
        if keyword == "type":
            if isinstance(value, list):
                if not value or len(set(map(str, value))) != len(value) or not all(type(v) is str for v in value):
                    return False
                if not _SIMPLE_TYPES.issuperset(value):
                    return False
            elif type(value) is not str or value not in _SIMPLE_TYPES:
                return False
        elif keyword == "properties":
            if type(value) is not dict or not all(well_formed(sub) for sub in value.values()):
                return False
        elif keyword in ("items", "additionalProperties", "propertyNames"):
            if not well_formed(value):
                return False
        elif keyword == "anyOf":
            if type(value) is not list or not value or not all(well_formed(sub) for sub in value):
                return False
        elif keyword == "required":
            if type(value) is not list or not all(type(v) is str for v in value) or len(set(value)) != len(value):
                return False
        elif keyword in ("enum", "examples"):
            if type(value) is not list:
                return False
        elif keyword in _COUNTS:
            if not (_is_integer(value) and value >= 0):
                return False
        elif keyword in ("minimum", "maximum"):
            if type(value) not in (int, float):
                return False
        elif keyword == "pattern":
            if type(value) is not str or not _is_regex(value):
                return False
        elif keyword in _TEXTS:
            if type(value) is not str:
                return False
        elif keyword in _FLAGS:
            if type(value) is not bool:
                return False
        elif keyword != "default":
            return False
    return True


def json_problem(schema: Any, where: str = "") -> str | None:
    """Where ``schema`` holds a value JSON cannot carry as it is (NaN or an infinity, an enum
    member, a tuple, bytes, a key that is not a string), worded for the pack's author; None
    when it is plain JSON. tools/list would send such a value as something else (``null``,
    the member's number), and the checks made from it would not be the schema clients see."""
    kind = type(schema)
    if kind in _JSON_SCALARS:
        return None
    if kind is float:
        return None if math.isfinite(schema) else f"{where or '/'}: {schema!r} is not a JSON number"
    if kind is dict or isinstance(schema, Mapping):
        for key, value in schema.items():
            if type(key) is not str:
                return f"{where or '/'}: key {key!r} is not a string"
            if type(value) not in _JSON_SCALARS:  # most values: no call, no path to build
                problem = json_problem(value, f"{where}/{key}")
                if problem is not None:
                    return problem
        return None
    if kind is list:
        for index, value in enumerate(schema):
            if type(value) not in _JSON_SCALARS:
                problem = json_problem(value, f"{where}/{index}")
                if problem is not None:
                    return problem
        return None
    return f"{where or '/'}: {schema!r} ({kind.__name__}) is not a JSON value; write plain JSON"


_JSON_SCALARS = frozenset({str, int, bool, type(None)})


def _is_regex(text: str) -> bool:
    # The meta-schema's "format": "regex", as jsonschema's format checker tells it.
    try:
        re.compile(text)
    except re.error:
        return False
    return True


def compiled_check(schema: Mapping[str, Any]) -> Check | None:
    """A generated check (fastjsonschema) for a schema in the common subset, or None."""
    if not _compilable(schema):
        return None
    import fastjsonschema

    try:
        validate = fastjsonschema.compile(dict(schema), use_default=False, use_formats=False)
    except Exception:  # noqa: BLE001 - code it could not generate (or exec): jsonschema decides
        return None

    def accepts(value: Any) -> bool:
        try:
            validate(value)
        except fastjsonschema.JsonSchemaValueException:
            return False
        return True

    return accepts


class ArgumentValidator:
    """Validates a tool's arguments: the fast check when it applies, jsonschema for the rest.

    Both are made on the first validation, not at declaration: generating a check's code
    (fastjsonschema) for every tool of the default packs was a fifth of ``mcpd --stdio``'s
    start-up (issue 15), and most tools of a session are never called."""

    _UNMADE: Any = object()

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self.schema = schema
        self._validator: Draft202012Validator | None = None
        self._fast: Check | None = self._UNMADE

    def problems(self, arguments: Any) -> list[str]:
        """What is wrong with ``arguments``, worded for a model; empty when they are valid."""
        fast = self._fast
        if fast is self._UNMADE:
            fast = self._fast = fast_check(self.schema) or compiled_check(self.schema)
        if fast is not None:
            try:
                if fast(arguments):
                    return []
            except (NameError, TypeError):
                # Generated code that cannot run (a bound it spelt as `inf`): jsonschema decides,
                # from now on.
                self._fast = None
        if self._validator is None:
            from jsonschema import Draft202012Validator  # only once a call is invalid: ~0.1 s to import

            self._validator = Draft202012Validator(self.schema)
        problems = []
        for error in sorted(
            self._validator.iter_errors(arguments), key=lambda e: [str(part) for part in e.absolute_path]
        ):
            where = "/".join(str(part) for part in error.absolute_path)
            problems.append(f"{where}: {error.message}" if where else error.message)
        return problems


# 2026-07-28 transports §Custom Headers: `x-mcp-header` mirrors a parameter into Mcp-Param-{name}.
X_MCP_HEADER = "x-mcp-header"
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_HEADER_TYPES = frozenset({"string", "integer", "boolean"})
_JS_SAFE = 2**53 - 1


@attrs.frozen
class HeaderParameter:
    """A tool parameter the client mirrors into an ``Mcp-Param-{name}`` header."""

    path: tuple[str, ...]
    header: str  # lowercase field name, e.g. "mcp-param-region"
    type: str

    def value_in(self, arguments: Mapping[str, Any]) -> Any:
        """The argument at this parameter's path, or None when absent."""
        node: Any = arguments
        for key in self.path:
            if not isinstance(node, Mapping):
                return None
            node = node.get(key)
        return node

    def matches(self, header_value: str, value: Any) -> bool:
        """Whether a decoded header value mirrors the body's ``value``."""
        if self.type == "boolean" or isinstance(value, bool):
            return header_value == ("true" if value is True else "false" if value is False else object())
        if self.type == "integer" and isinstance(value, (int, float)):
            # The spec's SHOULD: compare integers numerically ("42.0" equals 42).
            if abs(value) > _JS_SAFE:
                return False  # beyond what the spec lets a header carry (and float() overflows)
            try:
                return float(header_value) == float(value)
            except ValueError:
                return False
        return header_value == str(value)


def header_parameters(schema: Mapping[str, Any]) -> tuple[HeaderParameter, ...]:
    """The ``x-mcp-header`` parameters of an input schema; `ValueError` when one breaks the
    rules (a tool with an invalid annotation would be dropped by every conforming client)."""
    found: list[HeaderParameter] = []
    seen: set[str] = set()

    def walk(node: Any, path: tuple[str, ...] | None) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item, None)
            return
        if not isinstance(node, Mapping):
            return
        if X_MCP_HEADER in node:
            found.append(_header_parameter(node, path, seen))
        for key, value in node.items():
            if key == "properties" and isinstance(value, Mapping) and path is not None:
                for name, subschema in value.items():
                    walk(subschema, (*path, name))
            elif key not in _ANNOTATIONS and key not in ("enum", "const", X_MCP_HEADER):
                walk(value, None)

    walk(schema, ())
    return tuple(found)


def _header_parameter(node: Mapping[str, Any], path: tuple[str, ...] | None, seen: set[str]) -> HeaderParameter:
    name = node[X_MCP_HEADER]
    if not path:
        raise ValueError(f"{X_MCP_HEADER} may only annotate a property reached through `properties` keys alone")
    where = ".".join(path)
    if not isinstance(name, str) or not _TOKEN.match(name):
        raise ValueError(f"property {where}: {X_MCP_HEADER} must be an HTTP field-name token, not {name!r}")
    if node.get("type") not in _HEADER_TYPES:
        raise ValueError(f"property {where}: {X_MCP_HEADER} is only allowed on string, integer or boolean properties")
    if name.lower() in seen:
        raise ValueError(f"property {where}: {X_MCP_HEADER} {name!r} is used twice")
    seen.add(name.lower())
    return HeaderParameter(path, f"mcp-param-{name.lower()}", node["type"])


def object_schema(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """A closed JSON Schema object (no properties beyond ``properties``): the shape of a tool's
    arguments and of most of its results."""
    schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = list(required)
    return schema
