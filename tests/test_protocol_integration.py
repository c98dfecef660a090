"""The official Python SDK client against a real mcpd, for everything beyond tools: resources,
prompts, completion, logging, elicitation, sampling and roots, over stdio and HTTP, in both eras.

The daemon loads the conformance fixture pack (`tests.conformance_pack`); every trace is validated
against the official schemas when the test ends.
"""

from __future__ import annotations

from typing import Any

import anyio
from mcp import Client, types
from mcp.client.stdio import stdio_client
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

from tests.daemon import SCENARIO_TIMEOUT, DaemonTestCase, run_anyio

PACK = ("--tool-pack", "tests.conformance_pack")


async def on_elicit(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
    return types.ElicitResult(action="accept", content={"response": "yes", "name": "Ada"})


async def on_sample(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
    return types.CreateMessageResult(
        role="assistant", content=types.TextContent(type="text", text="Paris"), model="stub"
    )


async def on_roots(context: Any) -> types.ListRootsResult:
    return types.ListRootsResult(roots=[types.Root(uri="file:///tmp")])


class _Scenarios:
    mode: str
    transport: str
    start_daemon: Any
    stdio_parameters: Any
    errlog: Any
    explain: Any
    assertEqual: Any
    assertIn: Any
    assertTrue: Any

    def drive(self, scenario: Any, **callbacks: Any) -> Deferred[None]:
        if self.transport == "stdio":
            server: Any = stdio_client(self.stdio_parameters(*PACK), errlog=self.errlog())
        else:
            server = self.start_daemon(*PACK, fixture_pack=False).url

        async def main() -> None:
            with anyio.fail_after(SCENARIO_TIMEOUT):
                async with Client(server, mode=self.mode, **callbacks) as client:
                    await scenario(client)

        return deferToThread(run_anyio, main).addErrback(self.explain)

    def test_resources_prompts_completion(self) -> Deferred[None]:
        async def scenario(client: Client) -> None:
            listed = await client.list_resources()
            self.assertIn("test://static-text", [str(r.uri) for r in listed.resources])
            templates = await client.list_resource_templates()
            # Beside the default packs' note://{id} and task://{id}.
            self.assertIn("test://template/{id}/data", [t.uri_template for t in templates.resource_templates])
            read = await client.read_resource("test://template/7/data")
            self.assertIn('"id": "7"', read.contents[0].text)  # type: ignore[union-attr]
            binary = await client.read_resource("test://static-binary")
            self.assertTrue(binary.contents[0].blob)  # type: ignore[union-attr]
            prompts = await client.list_prompts()
            self.assertIn("test_prompt_with_image", [p.name for p in prompts.prompts])
            got = await client.get_prompt("test_prompt_with_arguments", {"arg1": "a", "arg2": "b"})
            self.assertEqual(got.messages[0].content.text, "Prompt with arguments: arg1='a', arg2='b'")  # type: ignore[union-attr]
            completed = await client.complete(
                types.PromptReference(type="ref/prompt", name="test_prompt_with_arguments"),
                {"name": "arg1", "value": "pa"},
            )
            self.assertEqual(completed.completion.values, ["paris", "park", "parse"])

        return self.drive(scenario)

    def test_elicitation_sampling_roots(self) -> Deferred[None]:
        async def scenario(client: Client) -> None:
            elicited = await client.call_tool("test_elicitation", {"message": "ok?"})
            self.assertIn("action=accept", elicited.content[0].text)  # type: ignore[union-attr]
            sampled = await client.call_tool("test_sampling", {"prompt": "Capital of France?"})
            self.assertEqual(sampled.content[0].text, "LLM response: Paris")  # type: ignore[union-attr]
            roots = await client.call_tool("test_input_required_result_list_roots", {})
            self.assertEqual(roots.content[0].text, "Found 1 root(s)")  # type: ignore[union-attr]

        return self.drive(
            scenario, elicitation_callback=on_elicit, sampling_callback=on_sample, list_roots_callback=on_roots
        )

    def test_logging(self) -> Deferred[None]:
        messages: list[Any] = []

        async def on_log(params: types.LoggingMessageNotificationParams) -> None:
            messages.append(params)

        async def scenario(client: Client) -> None:
            await client.call_tool("test_logging_tool", {})
            self.assertEqual([m.data for m in messages], ["Diagnostic trace logging activated"])

        return self.drive(scenario, logging_callback=on_log, log_level="debug")


class StdioLegacy(_Scenarios, DaemonTestCase):
    mode, transport = "legacy", "stdio"


class StdioModern(_Scenarios, DaemonTestCase):
    mode, transport = "2026-07-28", "stdio"


class HTTPLegacy(_Scenarios, DaemonTestCase):
    mode, transport = "legacy", "http"


class HTTPModern(_Scenarios, DaemonTestCase):
    mode, transport = "2026-07-28", "http"
