# -*- test-case-name: tests.test_schema_check -*-
"""Validate what mcpd sends against the vendored official MCP JSON schemas.

The schemas live in ``tests/schemas/<version>/schema.json``.  Everything the
checks need (which result answers which method, which notifications and
requests a server may send, which error codes have their own definition, which
methods may answer ``input_required``) is derived from those files, with a
small fallback table for methods whose result has no ``<Name>Result``
definition.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jsonschema.exceptions import ValidationError, best_match
from jsonschema.validators import validator_for

if TYPE_CHECKING:
    from jsonschema.protocols import Validator
    from twisted.trial.unittest import SynchronousTestCase

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"

#: Version used for "out" error lines written before any version was known.
FALLBACK_ERROR_VERSION = "2025-11-25"

#: Methods whose result has no ``<Request name minus "Request">Result`` definition.
_EMPTY_RESULT_METHODS = (
    "ping",
    "logging/setLevel",
    "resources/subscribe",
    "resources/unsubscribe",
)

#: Values of ``resultType`` named by the spec (the schema only says "string").
_RESULT_TYPES = ("complete", "input_required")
#: ``resultType`` values of extensions, with no definition in the core schema: SEP-2663's
#: ``CreateTaskResult`` ("task"), checked by `_task_problems`.
_EXTENSION_RESULT_TYPES = ("task",)
_TASK_STATUSES = ("working", "input_required", "completed", "failed", "cancelled")

_ENTRY_KEYS = frozenset({"dir", "peer", "version", "message"})
_MAX_ERRORS_PER_DEFINITION = 10
_MAX_TEXT = 300


@cache
def versions() -> tuple[str, ...]:
    """Return the protocol versions that have a vendored schema, oldest first."""
    return tuple(sorted(p.parent.name for p in SCHEMA_DIR.glob("*/schema.json")))


@dataclass(frozen=True)
class _Index:
    """What one version's schema says about the messages a server sends."""

    version: str
    defs_key: str
    defs: dict[str, Any]
    modern: bool
    error_response: str
    result_response: str
    batch_response: str | None
    result_for_method: dict[str, str] = field(default_factory=dict)
    input_required_methods: frozenset[str] = frozenset()
    server_notifications: dict[str, str] = field(default_factory=dict)
    server_requests: dict[str, str] | None = None
    all_notifications: dict[str, str] = field(default_factory=dict)
    all_requests: dict[str, str] = field(default_factory=dict)
    error_defs: dict[int, tuple[str, bool]] = field(default_factory=dict)


@cache
def _root(version: str) -> dict[str, Any]:
    with open(SCHEMA_DIR / version / "schema.json", encoding="utf-8") as f:
        root: dict[str, Any] = json.load(f)
    return root


def _ref_name(schema: dict[str, Any]) -> str | None:
    ref = schema.get("$ref")
    return ref.rsplit("/", 1)[-1] if isinstance(ref, str) else None


def _method_const(schema: dict[str, Any]) -> str | None:
    method = schema.get("properties", {}).get("method", {})
    const = method.get("const") if isinstance(method, dict) else None
    return const if isinstance(const, str) else None


def _union(defs: dict[str, Any], name: str) -> list[str]:
    """Names of the members of a union definition (or the definition itself)."""
    schema = defs.get(name)
    if schema is None:
        return []
    members = [_ref_name(s) for s in schema.get("anyOf", schema.get("oneOf", []))]
    return [m for m in members if m] or [name]


def _error_code_const(schema: dict[str, Any]) -> tuple[int, bool] | None:
    """``(code, whole_message)`` for a definition pinning an error code."""
    code = schema.get("properties", {}).get("code", {}).get("const")
    if isinstance(code, int):
        return code, False
    error = schema.get("properties", {}).get("error", {})
    for part in [error, *error.get("allOf", [])]:
        code = part.get("properties", {}).get("code", {}).get("const")
        if isinstance(code, int):
            return code, True
    return None


@cache
def _index(version: str) -> _Index:
    root = _root(version)
    defs_key = "$defs" if "$defs" in root else "definitions"
    defs: dict[str, Any] = root[defs_key]

    def first(*names: str) -> str:
        return next(n for n in names if n in defs)

    empty = "EmptyResult" if "EmptyResult" in defs else "Result"
    result_for_method: dict[str, str] = {}
    all_requests: dict[str, str] = {}
    all_notifications: dict[str, str] = {}
    for name, schema in defs.items():
        method = _method_const(schema)
        if method is None:
            continue
        if name.endswith("Request"):
            all_requests[method] = name
            result = name[: -len("Request")] + "Result"
            if result in defs:
                result_for_method[method] = result
            elif method in _EMPTY_RESULT_METHODS:
                result_for_method[method] = empty
        elif name.endswith("Notification"):
            all_notifications[method] = name

    input_required = set()
    for method, result in result_for_method.items():
        response = defs.get(result + "Response", {})
        alternatives = response.get("properties", {}).get("result", {}).get("anyOf", [])
        if "InputRequiredResult" in (_ref_name(s) for s in alternatives):
            input_required.add(method)

    def by_method(union: str) -> dict[str, str]:
        out = {}
        for name in _union(defs, union):
            method = _method_const(defs[name])
            if method is not None:
                out[method] = name
        return out

    error_defs = {}
    for name, schema in defs.items():
        if name.endswith("Error") and name != "Error":
            found = _error_code_const(schema)
            if found is not None:
                error_defs[found[0]] = (name, found[1])

    return _Index(
        version=version,
        defs_key=defs_key,
        defs=defs,
        modern="resultType" in defs["Result"].get("required", []),
        error_response=first("JSONRPCErrorResponse", "JSONRPCError"),
        result_response=first("JSONRPCResultResponse", "JSONRPCResponse"),
        batch_response="JSONRPCBatchResponse" if "JSONRPCBatchResponse" in defs else None,
        result_for_method=result_for_method,
        input_required_methods=frozenset(input_required),
        server_notifications=by_method("ServerNotification"),
        server_requests=by_method("ServerRequest") if "ServerRequest" in defs else None,
        all_notifications=all_notifications,
        all_requests=all_requests,
        error_defs=error_defs,
    )


@cache
def _validator(version: str, name: str) -> Validator:
    """A compiled validator for definition ``name`` of ``version``."""
    root = _root(version)
    index = _index(version)
    schema = {
        "$schema": root["$schema"],
        index.defs_key: index.defs,
        "$ref": f"#/{index.defs_key}/{name}",
    }
    return validator_for(schema)(schema)


def _short(text: str) -> str:
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 3] + "..."


def _describe(error: ValidationError, prefix: str) -> str:
    text = f"{error.json_path.replace('$', prefix, 1)}: {_short(error.message)}"
    if error.context:
        closest = best_match(error.context)
        path = closest.json_path.replace("$", prefix, 1)
        text += f" (closest: {path}: {_short(closest.message)})"
    return text


def _check(version: str, name: str, instance: Any, prefix: str = "$") -> list[str]:
    """Validate ``instance`` against definition ``name``; describe the failures."""
    errors = sorted(_validator(version, name).iter_errors(instance), key=lambda e: e.json_path)
    return [f"{name} ({version}): {_describe(e, prefix)}" for e in errors[:_MAX_ERRORS_PER_DEFINITION]]


def validate_message(version: str, message: dict[str, Any], request_method: str | None = None) -> list[str]:
    """Validate one message mcpd sent, under ``version``; return the problems.

    ``request_method`` is the method of the request a response answers, when
    known; it selects the specific result definition.
    """
    if version not in versions():
        return [f"no schema for protocol version {version!r}"]
    if not isinstance(message, dict):
        return [f"message is not a JSON object: {_short(repr(message))}"]
    index = _index(version)
    if "method" in message:
        if "id" in message:
            return _check_request(index, message)
        return _check_notification(index, message)
    if "error" in message:
        problems = _check(version, index.error_response, message)
        if "result" in message:
            problems.append("response carries both 'result' and 'error'")
        return problems + _check_error_code(index, message)
    if "result" in message:
        return _check_result(index, message, request_method)
    return [f"neither request, notification nor response: {_short(repr(message))}"]


def _check_request(index: _Index, message: dict[str, Any]) -> list[str]:
    version = index.version
    problems = _check(version, "JSONRPCRequest", message)
    method = message.get("method")
    if index.server_requests is None:
        return problems + [f"version {version} defines no server-to-client requests"]
    if method in index.server_requests:
        problems += _check(version, index.server_requests[method], message)
    elif method in index.all_requests:
        problems.append(f"{method!r} is not a server-to-client request in {version}")
    return problems


def _check_notification(index: _Index, message: dict[str, Any]) -> list[str]:
    version = index.version
    problems = _check(version, "JSONRPCNotification", message)
    method = message.get("method")
    if method in index.server_notifications:
        problems += _check(version, index.server_notifications[method], message)
    elif method in index.all_notifications:
        problems.append(f"{method!r} is not a server notification in {version}")
    return problems


def _check_error_code(index: _Index, message: dict[str, Any]) -> list[str]:
    error = message.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    if not isinstance(code, int) or code not in index.error_defs:
        return []
    name, whole_message = index.error_defs[code]
    if whole_message:
        return _check(index.version, name, message)
    return _check(index.version, name, error, "$.error")


def _check_result(index: _Index, message: dict[str, Any], request_method: str | None) -> list[str]:
    version = index.version
    problems = _check(version, index.result_response, message)
    result = message.get("result")
    if not isinstance(result, dict):
        return problems
    result_type = result.get("resultType")
    if index.modern:
        if "resultType" not in result:
            problems.append(f"result lacks 'resultType' (required in {version})")
        elif result_type not in _RESULT_TYPES + _EXTENSION_RESULT_TYPES:
            problems.append(f"resultType {result_type!r} is not one of {_RESULT_TYPES + _EXTENSION_RESULT_TYPES}")
        elif result_type == "task":
            return problems + _task_problems(result, request_method)
    if request_method is None or request_method not in index.result_for_method:
        return problems
    name = index.result_for_method[request_method]
    if index.modern and result_type == "input_required":
        if request_method not in index.input_required_methods:
            problems.append(f"{request_method!r} may not answer input_required in {version}")
            return problems
        name = "InputRequiredResult"
        if "inputRequests" not in result and "requestState" not in result:
            problems.append("InputRequiredResult has neither inputRequests nor requestState")
    elif "task" in result and "CreateTaskResult" in index.defs:
        name = "CreateTaskResult"  # answer to a task-augmented request
    return problems + _check(version, name, result, "$.result")


def _task_problems(result: dict[str, Any], request_method: str | None) -> list[str]:
    """SEP-2663 §Task Creation: a ``CreateTaskResult`` is a flat ``Result & Task``."""
    problems = []
    if request_method is not None and request_method != "tools/call":
        problems.append(f"{request_method!r} may not answer with a task")
    if not isinstance(result.get("taskId"), str):
        problems.append("CreateTaskResult: taskId must be a string")
    if result.get("status") not in _TASK_STATUSES:
        problems.append(f"CreateTaskResult: status {result.get('status')!r} is not one of {_TASK_STATUSES}")
    for key in ("createdAt", "lastUpdatedAt"):
        if not isinstance(result.get(key), str):
            problems.append(f"CreateTaskResult: {key} must be an ISO 8601 string")
    ttl = result.get("ttlMs", "absent")
    if ttl is not None and (not isinstance(ttl, int) or isinstance(ttl, bool) or ttl < 1):
        problems.append("CreateTaskResult: ttlMs must be null or a positive integer")
    poll = result.get("pollIntervalMs", 1)
    if not isinstance(poll, int) or isinstance(poll, bool) or poll < 1:
        problems.append("CreateTaskResult: pollIntervalMs must be a positive integer")
    problems.extend(
        f"CreateTaskResult carries {key}" for key in ("task", "result", "error", "requestState") if key in result
    )
    return problems


def _is_response(message: dict[str, Any]) -> bool:
    return "method" not in message and ("result" in message or "error" in message)


def _id_key(request_id: Any) -> str:
    return json.dumps(request_id, sort_keys=True)


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _trace_problems(path: str) -> tuple[list[str], int]:
    """Return the problems of the trace at ``path`` and its number of "out" lines."""
    problems: list[str] = []
    outs = 0
    # Per peer, the methods of the requests still unanswered under each id (one batch may carry
    # an id twice, and each copy is answered).
    pending: dict[str, dict[str, list[str | None]]] = {}
    try:
        with open(path, encoding="utf-8") as f:
            # Lines end at "\n" only: a message may hold U+2028 or U+0085, which splitlines() splits at.
            lines = f.read().split("\n")[:-1]
    except OSError as e:
        return [f"cannot read trace {path}: {e}"], 0
    for lineno, text in enumerate(lines, 1):
        try:
            # Strictly: NaN and Infinity are not JSON (RFC 8259 §6), whatever Python accepts.
            entry = json.loads(text, parse_constant=_not_json)
        except ValueError as e:
            problems.append(f"line {lineno}: not JSON ({e})")
            continue
        if not isinstance(entry, dict) or set(entry) != _ENTRY_KEYS:
            problems.append(f"line {lineno}: not a trace entry: {_short(text)}")
            continue
        peer, version, message = entry["peer"], entry["version"], entry["message"]
        where = f"line {lineno}, peer {peer!r}"
        if entry["dir"] not in ("in", "out") or not isinstance(peer, str):
            problems.append(f"{where}: bad 'dir' or 'peer': {_short(text)}")
            continue
        if version is not None and version not in versions():
            problems.append(f"{where}: unknown version {version!r}")
            continue
        requests = pending.setdefault(peer, {})
        batch = isinstance(message, list)
        items = message if batch else [message]
        if entry["dir"] == "in":
            arrived: dict[str, list[str | None]] = {}
            for item in items:
                if isinstance(item, dict) and "id" in item and not _is_response(item):
                    method = item.get("method")
                    arrived.setdefault(_id_key(item["id"]), []).append(method if isinstance(method, str) else None)
            # An id used again names the new request (an earlier one may have been refused
            # whole, as a batch can be, and never answered under its id).
            requests.update(arrived)
            continue
        outs += 1
        if batch and not message:
            problems.append(f"{where}: empty batch")
        elif batch and version is not None and _index(version).batch_response is None:
            problems.append(f"{where}: JSON-RPC batch sent, but {version} has no batches")
        for item in items:
            problems += [
                f"{where}, method {method or '?'}: {problem}" for method, problem in _check_out(version, item, requests)
            ]
    return problems, outs


def _check_out(
    version: str | None, message: Any, requests: dict[str, list[str | None]]
) -> list[tuple[str | None, str]]:
    """Validate one sent message; return ``(method, problem)`` pairs."""
    if not isinstance(message, dict):
        return [(None, f"message is not a JSON object: {_short(repr(message))}")]
    method = message.get("method") if isinstance(message.get("method"), str) else None
    is_response = _is_response(message)
    problems: list[str] = []
    if is_response and message.get("id") is not None:
        key = _id_key(message["id"])
        if requests.get(key):
            method = requests[key].pop(0)
        else:
            problems.append(f"answers id {message['id']!r}, which no pending request carried")
    if version is None:
        if not is_response or "error" not in message:
            problems.append("version not known yet, but the message is not an error")
            return [(method, p) for p in problems]
        version = FALLBACK_ERROR_VERSION
    elif is_response and "id" not in message and version < FALLBACK_ERROR_VERSION:
        # The schemas before it cannot express an error whose request id was unreadable (a
        # parse error, a refused batch): check it against the first that can.
        version = FALLBACK_ERROR_VERSION
    problems += validate_message(version, message, method if is_response else None)
    return [(method, p) for p in problems]


def validate_trace(path: str) -> list[str]:
    """Validate every "out" message of the mcpd trace at ``path``; return the problems.

    Each problem names its line number, peer and method.
    """
    return _trace_problems(path)[0]


def assert_trace_valid(testcase: SynchronousTestCase, path: str) -> None:
    """Fail ``testcase`` if the trace at ``path`` has problems or no "out" line."""
    problems, outs = _trace_problems(path)
    if problems:
        shown = "\n".join(problems[:50])
        more = f"\n... and {len(problems) - 50} more" if len(problems) > 50 else ""
        testcase.fail(f"{len(problems)} problem(s) in trace {path}:\n{shown}{more}")
    if outs == 0:
        testcase.fail(f"trace {path} has no 'out' line: nothing was validated")
