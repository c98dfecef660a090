"""Tests for resources, prompts, completion, logging, subscriptions and client requests, in both
eras, in memory (mcpd.protocol.catalog, channel, changes; mcpd.tools.resources, prompts).

The fixtures are the conformance pack's; every response and notification is checked against the
official schema of the version in force.
"""

from __future__ import annotations

import base64
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mcpd.protocol import errors
from mcpd.protocol.catalog import MAX_URI_LENGTH
from mcpd.protocol.engine import Engine
from mcpd.protocol.ledger import STREAM, SUBSCRIPTION, Ledger, Limit
from mcpd.protocol.versions import LATEST_LEGACY, META_CLIENT_CAPABILITIES, META_LOG_LEVEL
from mcpd.tools import ToolRegistry
from mcpd.tools.api import Caller
from mcpd.tools.resources import ResourceTemplate, resource_contents, template_pattern
from tests import conformance_pack
from tests.engine_harness import CAPABILITIES, MODERN, Peer, assert_valid, engine, envelope, error_code, legacy_peer


def check_notes(case: SynchronousTestCase, version: str, notes: list[dict[str, Any]]) -> None:
    for note in notes:
        assert_valid(case, version, note)


class ResourceTests(SynchronousTestCase):
    def both(self) -> list[Peer]:
        return [legacy_peer(self), Peer(self, engine(), modern=True)]

    def test_list(self) -> None:
        for peer in self.both():
            result = peer.result("resources/list")
            uris = [r["uri"] for r in result["resources"]]
            self.assertEqual(uris, sorted(uris))
            self.assertIn("test://static-text", uris)
            self.assertEqual(("ttlMs" in result), peer.modern)

    def test_templates_list(self) -> None:
        for peer in self.both():
            result = peer.result("resources/templates/list")
            self.assertEqual(result["resourceTemplates"][0]["uriTemplate"], "test://template/{id}/data")

    def test_read_text_binary_and_template(self) -> None:
        for peer in self.both():
            text = peer.result("resources/read", {"uri": "test://static-text"})["contents"][0]
            self.assertEqual(text["mimeType"], "text/plain")
            self.assertIn("static text resource", text["text"])
            blob = peer.result("resources/read", {"uri": "test://static-binary"})["contents"][0]
            self.assertTrue(base64.b64decode(blob["blob"]).startswith(b"\x89PNG"))
            templated = peer.result("resources/read", {"uri": "test://template/42/data"})["contents"][0]
            self.assertEqual(templated["uri"], "test://template/42/data")
            self.assertIn('"id": "42"', templated["text"])

    def test_read_cache_scope(self) -> None:
        """2026-07-28: a template's records (tenant data) are cacheScope private; a fixed resource
        is public, unless the keys' scopes decide who may read it (then private, as the lists)."""
        peer = Peer(self, engine(), modern=True)
        static = peer.result("resources/read", {"uri": "test://static-text"})
        self.assertEqual((static["cacheScope"], static["ttlMs"]), ("public", 60_000))
        templated = peer.result("resources/read", {"uri": "test://template/42/data"})
        self.assertEqual(templated["cacheScope"], "private")
        scoped = Engine(ToolRegistry([conformance_pack.pack]), clock=Clock(), entry_filter=lambda caller, entry: True)
        peer = Peer(self, scoped, modern=True)
        self.assertEqual(peer.result("resources/read", {"uri": "test://static-text"})["cacheScope"], "private")

    def test_not_found_is_invalid_params_with_the_uri(self) -> None:
        for peer in self.both():
            response = peer.request("resources/read", {"uri": "test://nope"})
            self.assertEqual(error_code(response), errors.INVALID_PARAMS)
            self.assertEqual(response["error"]["data"], {"uri": "test://nope"})

    def test_bad_input(self) -> None:
        for peer in self.both():
            self.assertEqual(error_code(peer.request("resources/read", {"uri": 5})), errors.INVALID_PARAMS)
            self.assertEqual(error_code(peer.request("resources/list", {"cursor": "bogus"})), errors.INVALID_PARAMS)

    def test_subscribe_is_legacy_only(self) -> None:
        peer = Peer(self, engine(), modern=True)
        self.assertEqual(error_code(peer.request("resources/subscribe", {"uri": "test://static-text"})), -32601)

    def test_template_matching(self) -> None:
        self.assertEqual(template_pattern("a://{x}/b").match("a://1/b").groupdict(), {"x": "1"})  # type: ignore[union-attr]
        self.assertIsNone(template_pattern("a://{x}/b").match("a://1/2/b"))
        for bad in ("x://{a.b}", "x://{1}"):
            self.assertRaises(ValueError, template_pattern, bad)
        self.assertEqual(template_pattern("f://{+path}").match("f://a/b").groupdict(), {"path": "a/b"})  # type: ignore[union-attr]
        template = ResourceTemplate("t://{a}/{b}", "t", lambda *_: "")
        self.assertEqual(template.variables, ("a", "b"))
        self.assertEqual(resource_contents("u:", "x/y", b"\x00")[0], {"uri": "u:", "blob": "AA==", "mimeType": "x/y"})

    def test_uri_needs_a_scheme(self) -> None:
        self.assertRaises(ValueError, ResourceTemplate, "no-scheme/{x}", "t", lambda *_: "")


class PromptTests(SynchronousTestCase):
    def both(self) -> list[Peer]:
        return [legacy_peer(self), Peer(self, engine(), modern=True)]

    def test_list_and_get(self) -> None:
        for peer in self.both():
            prompts = {p["name"]: p for p in peer.result("prompts/list")["prompts"]}
            self.assertEqual([a["name"] for a in prompts["test_prompt_with_arguments"]["arguments"]], ["arg1", "arg2"])
            got = peer.result(
                "prompts/get", {"name": "test_prompt_with_arguments", "arguments": {"arg1": "a", "arg2": "b"}}
            )
            self.assertEqual(got["messages"][0]["content"]["text"], "Prompt with arguments: arg1='a', arg2='b'")
            image = peer.result("prompts/get", {"name": "test_prompt_with_image"})
            self.assertEqual(image["messages"][0]["content"]["type"], "image")
            embedded = peer.result(
                "prompts/get", {"name": "test_prompt_with_embedded_resource", "arguments": {"resourceUri": "test://x"}}
            )
            self.assertEqual(embedded["messages"][0]["content"]["resource"]["uri"], "test://x")

    def test_errors(self) -> None:
        for peer in self.both():
            self.assertEqual(error_code(peer.request("prompts/get", {"name": "nope"})), errors.INVALID_PARAMS)
            missing = peer.request("prompts/get", {"name": "test_prompt_with_arguments", "arguments": {"arg1": "a"}})
            self.assertEqual(error_code(missing), errors.INVALID_PARAMS)
            wrong = peer.request("prompts/get", {"name": "test_simple_prompt", "arguments": {"x": 1}})
            self.assertEqual(error_code(wrong), errors.INVALID_PARAMS)


class CompletionTests(SynchronousTestCase):
    def test_prompt_argument_and_template_variable(self) -> None:
        for peer in (legacy_peer(self), Peer(self, engine(), modern=True)):
            prompt = peer.result(
                "completion/complete",
                {
                    "ref": {"type": "ref/prompt", "name": "test_prompt_with_arguments"},
                    "argument": {"name": "arg1", "value": "par"},
                },
            )
            self.assertEqual(prompt["completion"]["values"], ["paris", "park", "parse"])
            template = peer.result(
                "completion/complete",
                {
                    "ref": {"type": "ref/resource", "uri": "test://template/{id}/data"},
                    "argument": {"name": "id", "value": "1"},
                },
            )
            self.assertEqual(template["completion"]["values"], ["1", "123"])
            none = peer.result(
                "completion/complete",
                {
                    "ref": {"type": "ref/prompt", "name": "test_prompt_with_arguments"},
                    "argument": {"name": "arg2", "value": ""},
                },
            )
            self.assertEqual(none["completion"]["values"], [])

    def test_errors(self) -> None:
        peer = legacy_peer(self)
        bad = [
            {"ref": {"type": "ref/prompt", "name": "nope"}, "argument": {"name": "a", "value": ""}},
            {"ref": {"type": "ref/prompt", "name": "test_simple_prompt"}, "argument": {"name": "a", "value": ""}},
            {"ref": {"type": "ref/resource", "uri": "test://nope/{x}"}, "argument": {"name": "x", "value": ""}},
            {"ref": {"type": "ref/other"}, "argument": {"name": "x", "value": ""}},
            {"ref": {"type": "ref/prompt", "name": "test_simple_prompt"}, "argument": {"name": 1, "value": ""}},
        ]
        for params in bad:
            self.assertEqual(error_code(peer.request("completion/complete", params)), errors.INVALID_PARAMS, params)


class LoggingTests(SynchronousTestCase):
    def test_legacy_set_level_filters(self) -> None:
        peer = legacy_peer(self)
        self.assertEqual(peer.result("logging/setLevel", {"level": "warning"}), {})
        peer.call("test_logging_tool")
        self.assertEqual(peer.notes, [])
        peer.result("logging/setLevel", {"level": "debug"})
        peer.call("test_logging_tool")
        self.assertEqual([n["params"]["level"] for n in peer.notes], ["info"])
        check_notes(self, LATEST_LEGACY, peer.notes)
        self.assertEqual(error_code(peer.request("logging/setLevel", {"level": "loud"})), errors.INVALID_PARAMS)

    def test_modern_only_with_a_log_level_in_meta(self) -> None:
        peer = Peer(self, engine(), modern=True)
        peer.call("test_logging_tool")
        self.assertEqual(peer.notes, [])
        peer.call("test_logging_tool", meta={META_LOG_LEVEL: "info"})
        self.assertEqual(len(peer.notes), 1)
        check_notes(self, MODERN, peer.notes)
        peer.notes.clear()
        peer.call("test_logging_tool", meta={META_LOG_LEVEL: "error"})
        self.assertEqual(peer.notes, [])
        self.assertEqual(error_code(peer.request("logging/setLevel", {"level": "info"})), -32601)


class SubscriptionTests(SynchronousTestCase):
    def test_legacy_subscribe_updates_and_list_changed(self) -> None:
        e = engine()
        peer = legacy_peer(self, e=e)
        pushed: list[dict[str, Any]] = []
        peer.session.sink = pushed.append  # type: ignore[union-attr]
        self.assertEqual(peer.result("resources/subscribe", {"uri": "test://watched-resource"}), {})
        peer.call("test_update_watched_resource")
        self.assertEqual(pushed[-1]["params"], {"uri": "test://watched-resource"})
        peer.result("resources/unsubscribe", {"uri": "test://watched-resource"})
        peer.call("test_update_watched_resource")
        self.assertEqual(len(pushed), 1)
        peer.call("test_trigger_tool_change")
        self.assertEqual(pushed[-1]["method"], "notifications/tools/list_changed")
        check_notes(self, LATEST_LEGACY, pushed)

    def test_modern_listen(self) -> None:
        e = engine()
        listener = Peer(self, e, modern=True)
        message = listener.message(
            "subscriptions/listen",
            {"notifications": {"toolsListChanged": True, "resourceSubscriptions": ["test://watched-resource"]}},
        )
        d = listener.start(message)
        self.assertNoResult(d)
        [ack] = listener.notes
        self.assertEqual(ack["method"], "notifications/subscriptions/acknowledged")
        subscription = ack["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"]
        other = Peer(self, e, modern=True)
        other.call("test_trigger_prompt_change")  # not asked for
        other.call("test_trigger_tool_change")
        other.call("test_update_watched_resource")
        methods = [n["method"] for n in listener.notes[1:]]
        self.assertEqual(methods, ["notifications/tools/list_changed", "notifications/resources/updated"])
        for note in listener.notes:
            self.assertEqual(note["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"], subscription)
        check_notes(self, MODERN, listener.notes)
        d.cancel()
        self.assertIsNone(self.successResultOf(d))
        other.call("test_trigger_tool_change")
        self.assertEqual(len(listener.notes), 3)

    def test_server_ends_subscriptions(self) -> None:
        e = engine()
        listener = Peer(self, e, modern=True)
        listener.start(listener.message("subscriptions/listen", {"notifications": {}}))
        self.assertEqual(e.in_flight, 1)
        e.end_subscriptions()
        self.assertEqual(listener.notes[-1]["method"], "notifications/cancelled")
        check_notes(self, MODERN, listener.notes)
        # The listen request is over: a draining shutdown does not wait for it.
        self.assertEqual(e.in_flight, 0)
        self.assertEqual(e.changes.listeners, set())


class SubscriptionShareTests(SynchronousTestCase):
    """Listens are streams and their URIs subscriptions of their caller's, whatever carries
    them: held to its shares, and given back when they end."""

    def setUp(self) -> None:
        self.ledger = Ledger({STREAM: Limit(per_account=2), SUBSCRIPTION: Limit(total=3, per_account=3)})
        self.e = Engine(ToolRegistry([conformance_pack.pack]), clock=Clock(), client_timeout=5, ledger=self.ledger)

    def listen(self, peer: Peer, *uris: str) -> Any:
        notifications: dict[str, Any] = {"toolsListChanged": True}
        if uris:
            notifications["resourceSubscriptions"] = list(uris)
        return peer.start(peer.message("subscriptions/listen", {"notifications": notifications}))

    def test_listens_count_as_streams(self) -> None:
        peer = Peer(self, self.e, modern=True)
        first = self.listen(peer)
        self.listen(peer)
        self.assertEqual(self.ledger.held("tester", STREAM), 2)
        refused = self.successResultOf(self.listen(peer))
        self.assertEqual(error_code(refused), errors.LIMIT_EXCEEDED)
        self.assertEqual(refused["error"]["data"]["limit"], STREAM)
        self.assertIn("close a stream", refused["error"]["message"])
        assert_valid(self, MODERN, refused, "subscriptions/listen")
        # Another caller has streams of its own.
        other = Peer(self, self.e, modern=True, caller=Caller(name="other"))
        self.assertNoResult(self.listen(other))
        first.cancel()
        self.assertEqual(self.ledger.held("tester", STREAM), 1)
        self.assertNoResult(self.listen(peer))

    def test_listened_uris_count_as_subscriptions(self) -> None:
        peer = Peer(self, self.e, modern=True)
        listening = self.listen(peer, "test://a", "test://b", "test://a")
        self.assertEqual(self.ledger.held("tester", SUBSCRIPTION), 2)
        refused = self.successResultOf(self.listen(peer, "test://c", "test://d"))
        self.assertEqual(refused["error"]["data"]["limit"], SUBSCRIPTION)
        # The refused listen gave its stream back.
        self.assertEqual(self.ledger.held("tester", STREAM), 1)
        listening.cancel()
        self.assertEqual(self.ledger.holdings(), {})

    def test_legacy_subscriptions_count(self) -> None:
        peer = legacy_peer(self, e=self.e)
        for uri in ("test://a", "test://b", "test://c", "test://a"):
            self.assertEqual(peer.result("resources/subscribe", {"uri": uri}), {})
        refused = peer.request("resources/subscribe", {"uri": "test://d"})
        self.assertEqual(error_code(refused), errors.LIMIT_EXCEEDED)
        self.assertIn("unsubscribe from resources", refused["error"]["message"])
        peer.result("resources/unsubscribe", {"uri": "test://a"})
        self.assertEqual(self.ledger.held("tester", SUBSCRIPTION), 2)
        peer.session.close()  # type: ignore[union-attr]
        self.assertEqual(self.ledger.holdings(), {})

    def test_what_cannot_be_subscribed(self) -> None:
        self.e = Engine(
            ToolRegistry([conformance_pack.pack]),
            clock=Clock(),
            client_timeout=5,
            ledger=self.ledger,
            entry_filter=lambda caller, entry: getattr(entry, "uri", "") != "test://watched-resource",
        )
        for peer in (legacy_peer(self, e=self.e), Peer(self, self.e, modern=True)):
            if peer.modern:
                hidden = self.successResultOf(self.listen(peer, "test://watched-resource"))
                long = self.successResultOf(self.listen(peer, "test://" + "x" * MAX_URI_LENGTH))
            else:
                hidden = peer.request("resources/subscribe", {"uri": "test://watched-resource"})
                long = peer.request("resources/subscribe", {"uri": "test://" + "x" * MAX_URI_LENGTH})
            # A resource the caller may not see is answered as unknown (its updates would leak).
            self.assertEqual(error_code(hidden), errors.INVALID_PARAMS)
            self.assertIn("Resource not found", hidden["error"]["message"])
            self.assertIn(f"limited to {MAX_URI_LENGTH} characters", long["error"]["message"])
        self.assertEqual(self.ledger.holdings(), {})


class LegacyClientRequestTests(SynchronousTestCase):
    """2025-11-25 client/elicitation, sampling, roots: requests on the session's stream."""

    def test_elicitation_round_trip(self) -> None:
        peer = legacy_peer(self, CAPABILITIES)
        d = peer.start(peer.message("tools/call", {"name": "test_elicitation", "arguments": {"message": "Hi?"}}))
        self.assertNoResult(d)
        [request] = peer.notes
        self.assertEqual(request["method"], "elicitation/create")
        assert_valid(self, LATEST_LEGACY, request)
        answer = {"jsonrpc": "2.0", "id": request["id"], "result": {"action": "accept", "content": {"response": "yes"}}}
        self.assertIsNone(peer.send(answer))
        result = self.successResultOf(d)["result"]
        self.assertIn('action=accept, content={"response": "yes"}', result["content"][0]["text"])

    def test_sampling_error_and_timeout(self) -> None:
        e = engine()
        peer = legacy_peer(self, CAPABILITIES, e=e)
        d = peer.start(peer.message("tools/call", {"name": "test_sampling", "arguments": {"prompt": "2+2?"}}))
        request = peer.notes[-1]
        peer.send({"jsonrpc": "2.0", "id": request["id"], "error": {"code": -1, "message": "User rejected"}})
        result = self.successResultOf(d)["result"]
        self.assertTrue(result["isError"])
        self.assertIn("User rejected", result["content"][0]["text"])
        d = peer.start(peer.message("tools/call", {"name": "test_sampling", "arguments": {"prompt": "2+2?"}}))
        e.clock.advance(6)  # type: ignore[attr-defined]
        self.assertIn("did not answer", self.successResultOf(d)["result"]["content"][0]["text"])

    def test_missing_capability_and_stray_responses(self) -> None:
        peer = legacy_peer(self)
        response = peer.request("tools/call", {"name": "test_elicitation", "arguments": {"message": "Hi?"}})
        self.assertEqual(error_code(response), errors.MISSING_REQUIRED_CLIENT_CAPABILITY)
        self.assertIsNone(peer.send({"jsonrpc": "2.0", "id": "never-sent", "result": {}}))

    def test_session_close_cancels_pending_requests(self) -> None:
        peer = legacy_peer(self, CAPABILITIES)
        d = peer.start(peer.message("tools/call", {"name": "test_elicitation", "arguments": {"message": "Hi?"}}))
        peer.session.close()  # type: ignore[union-attr]
        self.assertIsNone(self.successResultOf(d))

    def test_duplicate_request_id(self) -> None:
        peer = legacy_peer(self, CAPABILITIES)
        message = peer.message("tools/call", {"name": "test_elicitation", "arguments": {"message": "Hi?"}})
        peer.start(message)
        self.assertEqual(error_code(peer.send(message)), errors.INVALID_REQUEST)


class InputRequiredTests(SynchronousTestCase):
    """2026-07-28 basic §Multi Round-Trip Requests."""

    def peer(self) -> Peer:
        return Peer(self, engine(), modern=True)

    def call(self, peer: Peer, name: str, caps: dict[str, Any] | None = None, **params: Any) -> dict[str, Any]:
        meta = {META_CLIENT_CAPABILITIES: CAPABILITIES if caps is None else caps}
        return peer.result("tools/call", {"name": name, **params}, meta=meta)

    def test_elicitation_retry(self) -> None:
        peer = self.peer()
        first = self.call(peer, "test_input_required_result_elicitation")
        self.assertEqual(first["resultType"], "input_required")
        self.assertEqual(first["inputRequests"]["user_name"]["method"], "elicitation/create")
        answer = {"user_name": {"action": "accept", "content": {"name": "Ada"}}}
        second = self.call(peer, "test_input_required_result_elicitation", inputResponses=answer)
        self.assertEqual(second["resultType"], "complete")
        self.assertEqual(second["content"][0]["text"], "Hello, Ada!")

    def test_multi_round_keeps_signed_state(self) -> None:
        peer = self.peer()
        first = self.call(peer, "test_input_required_result_multi_round")
        name = {"step1": {"action": "accept", "content": {"name": "Ada"}}}
        second = self.call(
            peer, "test_input_required_result_multi_round", inputResponses=name, requestState=first["requestState"]
        )
        self.assertIn("step2", second["inputRequests"])
        color = {"step2": {"action": "accept", "content": {"color": "green"}}}
        third = self.call(
            peer, "test_input_required_result_multi_round", inputResponses=color, requestState=second["requestState"]
        )
        self.assertEqual(third["content"][0]["text"], "Multi-round complete for Ada who likes green")

    def test_tampered_state_is_refused(self) -> None:
        peer = self.peer()
        first = self.call(peer, "test_input_required_result_tampered_state")
        tampered = "x" + first["requestState"]
        meta = {META_CLIENT_CAPABILITIES: CAPABILITIES}
        response = peer.request(
            "tools/call",
            {"name": "test_input_required_result_tampered_state", "requestState": tampered, "inputResponses": {}},
            meta=meta,
        )
        self.assertEqual(error_code(response), errors.INVALID_PARAMS)

    def test_several_inputs_in_one_round(self) -> None:
        first = self.call(self.peer(), "test_input_required_result_multiple_inputs")
        self.assertEqual(set(first["inputRequests"]), {"user_name", "greeting", "client_roots"})

    def test_missing_capability(self) -> None:
        peer = self.peer()
        response = peer.request("tools/call", {"name": "test_missing_capability"}, meta={META_CLIENT_CAPABILITIES: {}})
        self.assertEqual(error_code(response), errors.MISSING_REQUIRED_CLIENT_CAPABILITY)
        self.assertEqual(response["error"]["data"], {"requiredCapabilities": {"sampling": {}}})

    def test_prompt_asks_too(self) -> None:
        peer = self.peer()
        meta = {META_CLIENT_CAPABILITIES: CAPABILITIES}
        first = peer.result("prompts/get", {"name": "test_input_required_result_prompt"}, meta=meta)
        self.assertEqual(first["resultType"], "input_required")
        answer = {"user_context": {"action": "accept", "content": {"context": "tests"}}}
        second = peer.result(
            "prompts/get", {"name": "test_input_required_result_prompt", "inputResponses": answer}, meta=meta
        )
        self.assertEqual(second["messages"][0]["content"]["text"], "Prompt with context: tests")


__all__ = ["envelope"]


class ReviewRegressionTests(SynchronousTestCase):
    """Client input that once reached an internal error or an unguarded code path."""

    def test_unhashable_ids_in_responses_and_cancellations(self) -> None:
        peer = legacy_peer(self, CAPABILITIES)
        d = peer.start(peer.message("tools/call", {"name": "test_elicitation", "arguments": {"message": "Hi?"}}))
        # With a request of ours pending (so the dicts are not empty), unhashable ids are ignored.
        self.assertIsNone(peer.send({"jsonrpc": "2.0", "id": [1], "result": {}}))
        self.assertIsNone(
            peer.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": [1]}})
        )
        self.assertNoResult(d)
        self.assertEqual(peer.result("ping"), {})

    def test_non_ascii_request_state_is_invalid_params(self) -> None:
        peer = Peer(self, engine(), modern=True)
        meta = {META_CLIENT_CAPABILITIES: CAPABILITIES}
        for state in ("a.\u00e9", "\ud800.x"):
            response = peer.request(
                "tools/call",
                {"name": "test_input_required_result_tampered_state", "requestState": state, "inputResponses": {}},
                meta=meta,
            )
            self.assertEqual(error_code(response), errors.INVALID_PARAMS, state)

    def test_completion_ref_name_must_be_a_string(self) -> None:
        peer = legacy_peer(self)
        response = peer.request(
            "completion/complete",
            {"ref": {"type": "ref/prompt", "name": ["x"]}, "argument": {"name": "a", "value": ""}},
        )
        self.assertEqual(error_code(response), errors.INVALID_PARAMS)
