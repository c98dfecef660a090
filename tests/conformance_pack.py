# -*- test-case-name: tests.test_conformance -*-
"""The fixtures the official MCP conformance suite expects, as a third-party tool pack.

Loaded with ``--tool-pack tests.conformance_pack`` by `tests.test_conformance`; never shipped.
Names and behaviour follow the scenarios in ``src/scenarios/server/`` of the public repository
``modelcontextprotocol/conformance`` (0.2.0-alpha.12) and its reference everything-server. Each
fixture is written once against mcpd's pack API and serves both protocol eras: legacy sessions
get real server-to-client requests, 2026-07-28 requests get InputRequiredResults.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater

from mcpd.tools.api import RequestContext, ToolContext, ToolError, ToolResult
from mcpd.tools.pack import ToolPack
from mcpd.tools.prompts import PromptArgument, user_text

pack = ToolPack("conformance", "Fixtures of the MCP conformance suite (tests only).")

# A 1x1 PNG and a tiny WAV, as the suite's reference server returns.
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
WAV = "UklGRiQAAABXQVZFZm10IBAAAAABAAEAQB8AAEAfAAABAAgAZGF0YQAAAAA="

_NO_ARGS: dict[str, Any] = {"type": "object", "properties": {}}


# What the fixtures sleep on: the reactor, or a test's Clock.
sleep_clock: Any = None


def _sleep(seconds: float) -> Deferred[None]:
    clock = sleep_clock
    if clock is None:
        from twisted.internet import reactor as clock
    return deferLater(clock, seconds)


# -- tools ---------------------------------------------------------------------------------------


@pack.tool("test_simple_text", description="Tests simple text content response")
def simple_text(ctx: ToolContext, arguments: dict[str, Any]) -> ToolResult:
    return ToolResult.text("This is a simple text response for testing.")


@pack.tool("test_image_content", description="Tests image content response")
def image_content(ctx: ToolContext, arguments: dict[str, Any]) -> ToolResult:
    return ToolResult([{"type": "image", "data": PNG, "mimeType": "image/png"}])


@pack.tool("test_audio_content", description="Tests audio content response")
def audio_content(ctx: ToolContext, arguments: dict[str, Any]) -> ToolResult:
    return ToolResult([{"type": "audio", "data": WAV, "mimeType": "audio/wav"}])


@pack.tool("test_embedded_resource", description="Tests embedded resource content response")
def embedded_resource(ctx: ToolContext, arguments: dict[str, Any]) -> ToolResult:
    resource = {
        "uri": "test://embedded-resource",
        "mimeType": "text/plain",
        "text": "This is an embedded resource content.",
    }
    return ToolResult([{"type": "resource", "resource": resource}])


@pack.tool(
    "test_multiple_content_types", description="Tests response with multiple content types (text, image, resource)"
)
def multiple_content_types(ctx: ToolContext, arguments: dict[str, Any]) -> ToolResult:
    resource = {
        "uri": "test://mixed-content-resource",
        "mimeType": "application/json",
        "text": json.dumps({"test": "data", "value": 123}),
    }
    return ToolResult(
        [
            {"type": "text", "text": "Multiple content types test:"},
            {"type": "image", "data": PNG, "mimeType": "image/png"},
            {"type": "resource", "resource": resource},
        ]
    )


@pack.tool("test_tool_with_logging", description="Tests tool that emits log messages during execution")
@inlineCallbacks
def tool_with_logging(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    ctx.client_log("info", "Tool execution started")
    yield _sleep(0.05)
    ctx.client_log("info", "Tool processing data")
    yield _sleep(0.05)
    ctx.client_log("info", "Tool execution completed")
    return ToolResult.text("Tool with logging executed successfully")


@pack.tool("test_tool_with_progress", description="Tests tool that reports progress notifications")
@inlineCallbacks
def tool_with_progress(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    for step in (0, 50, 100):
        ctx.progress(step, 100, f"Completed step {step} of 100")
        if step < 100:
            yield _sleep(0.05)
    return ToolResult.text("Progress reported")


@pack.tool("test_error_handling", description="Tests error response handling")
def error_handling(ctx: ToolContext, arguments: dict[str, Any]) -> None:
    raise ToolError("This tool intentionally returns an error for testing")


@pack.tool("test_reconnection", description="Tests SSE stream disconnection and client reconnection (SEP-1699).")
@inlineCallbacks
def reconnection(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    yield _sleep(0.1)
    return ToolResult.text("Reconnection test completed successfully.")


_PROMPT_ARG = {"type": "object", "properties": {"prompt": {"type": "string"}}, "required": ["prompt"]}


@pack.tool(
    "test_sampling", description="Tests server-initiated sampling (LLM completion request)", input_schema=_PROMPT_ARG
)
@inlineCallbacks
def sampling(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    messages = [{"role": "user", "content": {"type": "text", "text": arguments["prompt"]}}]
    result = yield ctx.sample(messages, 100, key="sample")
    content = result.get("content")
    text = content.get("text") if isinstance(content, dict) else None
    return ToolResult.text(f"LLM response: {text or 'No response'}")


_MESSAGE_ARG = {"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]}


@pack.tool(
    "test_elicitation", description="Tests server-initiated elicitation (user input request)", input_schema=_MESSAGE_ARG
)
@inlineCallbacks
def elicitation(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    schema = {
        "type": "object",
        "properties": {"response": {"type": "string", "description": "User's response"}},
        "required": ["response"],
    }
    result = yield ctx.elicit(arguments["message"], schema, key="response")
    return ToolResult.text(
        f"User response: action={result.get('action')}, content={json.dumps(result.get('content') or {})}"
    )


@pack.tool("test_elicitation_sep1034_defaults", description="Tests elicitation with default values per SEP-1034")
@inlineCallbacks
def elicitation_defaults(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "description": "User name", "default": "John Doe"},
            "age": {"type": "integer", "description": "User age", "default": 30},
            "score": {"type": "number", "description": "User score", "default": 95.5},
            "status": {
                "type": "string",
                "description": "User status",
                "enum": ["active", "inactive", "pending"],
                "default": "active",
            },
            "verified": {"type": "boolean", "description": "Verification status", "default": True},
        },
        "required": [],
    }
    result = yield ctx.elicit("Please review and update the form fields with defaults", schema, key="form")
    return ToolResult.text(
        f"Elicitation completed: action={result.get('action')}, content={json.dumps(result.get('content') or {})}"
    )


@pack.tool("test_elicitation_sep1330_enums", description="Tests elicitation with enum schema improvements per SEP-1330")
@inlineCallbacks
def elicitation_enums(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    titled = [{"const": f"value{i}", "title": title} for i, title in enumerate(("First", "Second", "Third"), 1)]
    schema = {
        "type": "object",
        "properties": {
            "untitledSingle": {
                "type": "string",
                "description": "Select one option",
                "enum": ["option1", "option2", "option3"],
            },
            "titledSingle": {
                "type": "string",
                "description": "Select one option with titles",
                "oneOf": [{"const": c["const"], "title": f"{c['title']} Option"} for c in titled],
            },
            "legacyEnum": {
                "type": "string",
                "description": "Select one option (legacy)",
                "enum": ["opt1", "opt2", "opt3"],
                "enumNames": ["Option One", "Option Two", "Option Three"],
            },
            "untitledMulti": {
                "type": "array",
                "description": "Select multiple options",
                "minItems": 1,
                "maxItems": 3,
                "items": {"type": "string", "enum": ["option1", "option2", "option3"]},
            },
            "titledMulti": {
                "type": "array",
                "description": "Select multiple options with titles",
                "minItems": 1,
                "maxItems": 3,
                "items": {"anyOf": [{"const": c["const"], "title": f"{c['title']} Choice"} for c in titled]},
            },
        },
        "required": [],
    }
    result = yield ctx.elicit("Please select options from the enum fields", schema, key="enums")
    return ToolResult.text(
        f"Elicitation completed: action={result.get('action')}, content={json.dumps(result.get('content') or {})}"
    )


@pack.tool(
    "json_schema_2020_12_tool",
    description="Tool with JSON Schema 2020-12 features for conformance testing (SEP-1613)",
    input_schema={
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "$defs": {
            "address": {
                "$anchor": "addressDef",
                "type": "object",
                "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
            }
        },
        "properties": {
            "name": {"type": "string"},
            "address": {"$ref": "#/$defs/address"},
            "contactMethod": {"type": "string", "enum": ["phone", "email"]},
            "phone": {"type": "string"},
            "email": {"type": "string"},
        },
        "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
        "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
        "then": {"required": ["phone"]},
        "else": {"required": ["email"]},
        "additionalProperties": False,
    },
)
def json_schema_2020_12(ctx: ToolContext, arguments: dict[str, Any]) -> ToolResult:
    return ToolResult.text(f"JSON Schema 2020-12 tool called with: {json.dumps(arguments)}")


# -- resources -----------------------------------------------------------------------------------


@pack.resource(
    "test://static-text",
    name="static-text",
    title="Static Text Resource",
    description="A static text resource for testing",
    mime_type="text/plain",
)
def static_text(ctx: RequestContext, uri: str) -> str:
    return "This is the content of the static text resource."


@pack.resource(
    "test://static-binary",
    name="static-binary",
    title="Static Binary Resource",
    description="A static binary resource (image) for testing",
    mime_type="image/png",
)
def static_binary(ctx: RequestContext, uri: str) -> dict[str, Any]:
    return {"blob": PNG}


@pack.resource_template(
    "test://template/{id}/data",
    name="template",
    title="Resource Template",
    description="A resource template with parameter substitution",
    mime_type="application/json",
    completions={"id": lambda _ctx, value, _context: [i for i in ("1", "2", "3", "123") if i.startswith(value)]},
)
def template(ctx: RequestContext, uri: str, variables: dict[str, str]) -> str:
    identifier = variables["id"]
    return json.dumps({"id": identifier, "templateTest": True, "data": f"Data for ID: {identifier}"})


@pack.resource(
    "test://watched-resource",
    name="watched-resource",
    title="Watched Resource",
    description="A resource that changes when test_update_watched_resource is called",
    mime_type="text/plain",
)
def watched(ctx: RequestContext, uri: str) -> str:
    return f"Watched resource content, version {_watched[0]}"


_watched = [1]


@pack.tool("test_update_watched_resource", description="Change test://watched-resource and notify its subscribers")
def update_watched(ctx: ToolContext, arguments: dict[str, Any]) -> ToolResult:
    _watched[0] += 1
    ctx.resource_updated("test://watched-resource")
    return ToolResult.text(f"watched resource is now version {_watched[0]}")


# -- prompts -------------------------------------------------------------------------------------


@pack.prompt("test_simple_prompt", title="Simple Test Prompt", description="A simple prompt without arguments")
def simple_prompt(ctx: RequestContext, arguments: dict[str, str]) -> str:
    return "This is a simple prompt for testing."


@pack.prompt(
    "test_prompt_with_arguments",
    title="Prompt With Arguments",
    description="A prompt with required arguments",
    arguments=(
        PromptArgument(
            "arg1",
            "First test argument",
            required=True,
            complete=lambda _ctx, value, _context: [v for v in ("paris", "park", "parse") if v.startswith(value)],
        ),
        PromptArgument("arg2", "Second test argument", required=True),
    ),
)
def prompt_with_arguments(ctx: RequestContext, arguments: dict[str, str]) -> str:
    return f"Prompt with arguments: arg1='{arguments['arg1']}', arg2='{arguments['arg2']}'"


@pack.prompt(
    "test_prompt_with_embedded_resource",
    title="Prompt With Embedded Resource",
    description="A prompt that includes an embedded resource",
    arguments=(PromptArgument("resourceUri", "URI of the resource to embed", required=True),),
)
def prompt_with_embedded_resource(ctx: RequestContext, arguments: dict[str, str]) -> list[dict[str, Any]]:
    resource = {
        "uri": arguments["resourceUri"],
        "mimeType": "text/plain",
        "text": "Embedded resource content for testing.",
    }
    return [
        {"role": "user", "content": {"type": "resource", "resource": resource}},
        user_text("Please process the embedded resource above."),
    ]


@pack.prompt("test_prompt_with_image", title="Prompt With Image", description="A prompt that includes image content")
def prompt_with_image(ctx: RequestContext, arguments: dict[str, str]) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": {"type": "image", "data": PNG, "mimeType": "image/png"}},
        user_text("Please analyze the image above."),
    ]


# -- 2026-07-28 stateless diagnostics (server-stateless scenario) ----------------------------------


@pack.tool("test_missing_capability", description="Needs the client's sampling capability (-32021 without it)")
@inlineCallbacks
def missing_capability(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    yield ctx.sample([{"role": "user", "content": {"type": "text", "text": "Say hello"}}], 10, key="hello")
    return ToolResult.text("Success")


@pack.tool("test_streaming_elicitation", description="Reports progress, then asks the user for input")
@inlineCallbacks
def streaming_elicitation(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    ctx.progress(50, 100, "half way")
    answer = yield ctx.elicit("Continue?", {"type": "object", "properties": {"ok": {"type": "boolean"}}}, key="go")
    return ToolResult.text(f"Streaming complete: {answer.get('action')}")


@pack.tool("test_logging_tool", description="Logs one message, only if the request asked for messages")
def logging_tool(ctx: ToolContext, arguments: dict[str, Any]) -> ToolResult:
    ctx.client_log("info", "Diagnostic trace logging activated")
    return ToolResult.text("Logging evaluated")


@pack.tool("test_trigger_tool_change", description="Announce a change of the tool list")
def trigger_tool_change(ctx: ToolContext, arguments: dict[str, Any]) -> ToolResult:
    ctx.list_changed("tools")
    return ToolResult.text("Mutation triggered")


@pack.tool("test_trigger_prompt_change", description="Announce a change of the prompt list")
def trigger_prompt_change(ctx: ToolContext, arguments: dict[str, Any]) -> ToolResult:
    ctx.list_changed("prompts")
    return ToolResult.text("Mutation triggered")


# -- multi round-trip requests (input-required-result scenarios) -----------------------------------


def _field(answer: dict[str, Any], name: str) -> Any:
    content = answer.get("content")
    return content.get(name) if isinstance(content, dict) else None


def _string_form(name: str) -> dict[str, Any]:
    return {"type": "object", "properties": {name: {"type": "string"}}, "required": [name]}


_CONFIRM = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}


@pack.tool("test_input_required_result_elicitation", description="Asks the user's name, then greets them")
@inlineCallbacks
def irr_elicitation(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    answer = yield ctx.elicit("What is your name?", _string_form("name"), key="user_name")
    return ToolResult.text(f"Hello, {_field(answer, 'name')}!")


@pack.tool("test_input_required_result_sampling", description="Asks the client's model a question")
@inlineCallbacks
def irr_sampling(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    question = [{"role": "user", "content": {"type": "text", "text": "What is the capital of France?"}}]
    answer = yield ctx.sample(question, 100, key="sample_request")
    content = answer.get("content")
    text = content.get("text") if isinstance(content, dict) else None
    return ToolResult.text(f"Sampling result: {text if isinstance(text, str) else 'no response'}")


@pack.tool("test_input_required_result_list_roots", description="Asks the client for its roots")
@inlineCallbacks
def irr_list_roots(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    answer = yield ctx.list_roots(key="roots_request")
    roots = answer.get("roots")
    return ToolResult.text(f"Found {len(roots) if isinstance(roots, list) else 0} root(s)")


@pack.tool("test_input_required_result_request_state", description="Keeps state across rounds in requestState")
@inlineCallbacks
def irr_request_state(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    state = ctx.request_state
    if state is None:
        ctx.request_state = {"kind": "request-state"}
    answer = yield ctx.elicit("Please confirm", _CONFIRM, key="confirm")
    if not (isinstance(state, dict) and state.get("kind") == "request-state" and _field(answer, "ok") is True):
        ctx.request_state = {"kind": "request-state"}
        raise ToolError("requestState was not carried over, or the user did not confirm")
    return ToolResult.text("state-ok: requestState validated")


@pack.tool("test_input_required_result_multiple_inputs", description="Asks for three inputs in one round")
@inlineCallbacks
def irr_multiple_inputs(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    from twisted.internet.defer import gatherResults

    ctx.request_state = {"kind": "multiple-inputs"}
    greeting = [{"role": "user", "content": {"type": "text", "text": "Generate a greeting"}}]
    name, sample, roots = yield gatherResults(
        [
            ctx.elicit("What is your name?", _string_form("name"), key="user_name"),
            ctx.sample(greeting, 50, key="greeting"),
            ctx.list_roots(key="client_roots"),
        ],
        consumeErrors=True,
    )
    content = sample.get("content")
    text = content.get("text") if isinstance(content, dict) else "Hello there!"
    count = len(roots.get("roots") or [])
    return ToolResult.text(f"{text} {_field(name, 'name')}! You have {count} root(s).")


@pack.tool("test_input_required_result_multi_round", description="Asks two questions in two rounds")
@inlineCallbacks
def irr_multi_round(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    state = ctx.request_state if isinstance(ctx.request_state, dict) else {"round": 0}
    if state.get("round") == 2:
        color = yield ctx.elicit("Step 2: What is your favorite color?", _string_form("color"), key="step2")
        return ToolResult.text(f"Multi-round complete for {state.get('name')} who likes {_field(color, 'color')}")
    ctx.request_state = {"round": 1}
    name = yield ctx.elicit("Step 1: What is your name?", _string_form("name"), key="step1")
    ctx.request_state = {"round": 2, "name": _field(name, "name")}
    yield ctx.elicit("Step 2: What is your favorite color?", _string_form("color"), key="step2")
    return ToolResult.text("unreachable: step 2 always needs a new round")


@pack.tool("test_input_required_result_tampered_state", description="Refuses a requestState the client altered")
@inlineCallbacks
def irr_tampered_state(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    # mcpd signs requestState and refuses an altered one (-32602) before the tool runs.
    verified = ctx.request_state
    ctx.request_state = {"kind": "tamper-test"}
    yield ctx.elicit("Please confirm", _CONFIRM, key="confirm")
    if not (isinstance(verified, dict) and verified.get("kind") == "tamper-test"):
        raise ToolError("requestState missing")
    return ToolResult.text("integrity-ok: state verified")


@pack.tool("test_input_required_result_capabilities", description="Asks only for what the client can answer")
@inlineCallbacks
def irr_capabilities(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    from twisted.internet.defer import gatherResults

    capabilities = ctx.channel.client_capabilities()
    asks = []
    if "elicitation" in capabilities:
        asks.append(ctx.elicit("Elicitation input", _string_form("value"), key="elicit_input"))
    if "sampling" in capabilities:
        sample = [{"role": "user", "content": {"type": "text", "text": "Sample request"}}]
        asks.append(ctx.sample(sample, 50, key="sample_input"))
    if not asks:
        return ToolResult.text("No supported capabilities declared")
    ctx.request_state = {"kind": "capabilities-test"}
    yield gatherResults(asks, consumeErrors=True)
    return ToolResult.text(f"capabilities-ok: received {','.join(sorted(ctx.channel.input_responses))}")


@pack.prompt("test_input_required_result_prompt", description="MRTR: prompt that requires elicitation input")
@inlineCallbacks
def irr_prompt(ctx: RequestContext, arguments: dict[str, str]) -> Any:
    answer = yield ctx.elicit("What context should the prompt use?", _string_form("context"), key="user_context")
    return f"Prompt with context: {_field(answer, 'context')}"


@pack.tool(
    "test_custom_header",
    description="Echo a region that clients mirror into the Mcp-Param-Region header (SEP-2243)",
    input_schema={
        "type": "object",
        "properties": {"region": {"type": "string", "x-mcp-header": "Region"}},
        "required": ["region"],
    },
)
def custom_header(ctx: ToolContext, arguments: dict[str, Any]) -> ToolResult:
    return ToolResult.text(f"region={arguments['region']}")


# -- tasks (the io.modelcontextprotocol/tasks scenarios, and 2025-11-25 tasks) -----------------


@pack.tool(
    "greet",
    description="Greets someone (never a task)",
    input_schema={"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
)
def greet(ctx: ToolContext, arguments: dict[str, Any]) -> ToolResult:
    return ToolResult.text(f"Hello, {arguments['name']}!")


@pack.tool(
    "slow_compute",
    description="Sleeps for the given seconds, then answers; runs as a task when the client can poll",
    input_schema={
        "type": "object",
        "properties": {"seconds": {"type": "number", "minimum": 0}, "label": {"type": "string"}},
        "required": ["seconds"],
    },
    task_support="optional",
)
@inlineCallbacks
def slow_compute(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    seconds = arguments["seconds"]
    yield _sleep(seconds)
    return ToolResult.text(f"Computed {arguments.get('label', 'result')} after {seconds:g}s")


@pack.tool("failing_job", description="Always ends in a tool error; only runs as a task", task_support="required")
@inlineCallbacks
def failing_job(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    yield _sleep(0.5)
    raise ToolError("The job failed: the input could not be processed")


@pack.tool("protocol_error_job", description="Always ends in a protocol error", task_support="optional")
@inlineCallbacks
def protocol_error_job(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    from mcpd.protocol.errors import InternalError

    yield _sleep(0.1)
    raise InternalError("The job's backend is unavailable")


@pack.tool(
    "confirm_delete",
    description="Asks the user to confirm before deleting a file",
    input_schema={"type": "object", "properties": {"filename": {"type": "string"}}, "required": ["filename"]},
    task_support="optional",
)
@inlineCallbacks
def confirm_delete(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    form = {"type": "object", "properties": {"confirm": {"type": "boolean"}}, "required": ["confirm"]}
    answer = yield ctx.elicit(f"Delete {arguments['filename']}?", form, key="confirm")
    if answer.get("action") == "accept" and _field(answer, "confirm") is True:
        return ToolResult.text(f"Deleted {arguments['filename']}")
    return ToolResult.text(f"Kept {arguments['filename']}")


@pack.tool("multi_input", description="Asks two questions at once", task_support="optional")
@inlineCallbacks
def multi_input(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    from twisted.internet.defer import gatherResults

    confirm = {"type": "object", "properties": {"confirm": {"type": "boolean"}}, "required": ["confirm"]}
    name, confirmed = yield gatherResults(
        [
            ctx.elicit("What is your name?", _string_form("name"), key="name"),
            ctx.elicit("Shall I go on?", confirm, key="confirm"),
        ],
        consumeErrors=True,
    )
    return ToolResult.text(f"Hello, {_field(name, 'name')} (confirmed: {_field(confirmed, 'confirm')})")


@pack.tool(
    "test_tool_with_task",
    description="Asks the user's name by multi-round trip, then finishes as a task",
    task_support="required",
    task_start="handler",
)
@inlineCallbacks
def tool_with_task(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    answer = yield ctx.elicit("What is your name?", _string_form("name"), key="user_name")
    yield ctx.start_task()
    yield _sleep(0.2)
    return ToolResult.text(f"Hello, {_field(answer, 'name')}! Your task is done.")
