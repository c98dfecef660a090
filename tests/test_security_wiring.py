"""Tests for `mcpd.web.security` and the security knobs: settings to policy, SIGHUP reloads."""

from __future__ import annotations

from pathlib import Path

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mcpd.protocol.engine import Engine
from mcpd.settings import SettingError, resolve
from mcpd.tap import Options
from mcpd.tools.pack import ToolRegistry
from mcpd.web.scopes import ScopePolicy
from mcpd.web.security import Security, SecurityConfigError


class KnobTests(SynchronousTestCase):
    def test_switch_from_flag_and_environment(self) -> None:
        options = Options()
        options.parseOptions(["--insecure-no-auth"])
        assert options.settings is not None
        self.assertTrue(options.settings.insecure_no_auth)
        self.assertTrue(resolve({}, {"INSECURE_NO_AUTH": "1"}, {}).insecure_no_auth)
        self.assertFalse(resolve({"insecure_no_auth": None}, {}, {}).insecure_no_auth)
        self.assertRaises(SettingError, resolve, {}, {"INSECURE_NO_AUTH": "maybe"}, {})

    def test_repeatable_and_environment(self) -> None:
        options = Options()
        options.parseOptions(["--api-key", "k1", "--api-key", "k2", "--allowed-ip", "10.0.0.0/8"])
        assert options.settings is not None
        self.assertEqual(options.settings.api_key, ("k1", "k2"))
        self.assertNotIn("k1", repr(options.settings))
        settings = resolve({}, {"API_KEYS": "a,b", "ALLOWED_IPS": "::1, 10.0.0.0/8"}, {})
        self.assertEqual((settings.api_key, settings.allowed_ip), (("a", "b"), ("::1", "10.0.0.0/8")))
        self.assertRaises(SettingError, resolve, {}, {"ALLOWED_IPS": "10.0.0.300"}, {})
        self.assertRaises(SettingError, resolve, {}, {"AUDIT_LOG": "some"}, {})

    def test_bad_key_file_stops_start_up(self) -> None:
        from twisted.python.usage import UsageError

        path = Path(self.mktemp())
        path.write_text("bad name:key\n", encoding="utf-8")
        e = self.assertRaises(UsageError, Options().parseOptions, ["--api-key-file", str(path)])
        self.assertIn("line 1", str(e))


class SecurityTests(SynchronousTestCase):
    def test_scopes_only_with_keys(self) -> None:
        registry = ToolRegistry()
        engine = Engine(registry)
        Security(resolve({}, {}, {}), Clock()).attach(engine, registry)
        self.assertIsNone(engine.tool_filter)
        self.assertEqual(len(engine.observers), 1)
        Security(resolve({"api_key": ["k"]}, {}, {}), Clock()).attach(engine, registry)
        self.assertIsInstance(engine.tool_filter, ScopePolicy)

    def test_audit_log_default(self) -> None:
        self.assertFalse(Security(resolve({}, {}, {}), Clock()).audit.log_calls)
        self.assertTrue(Security(resolve({"api_key": ["k"]}, {}, {}), Clock()).audit.log_calls)
        # No keys but a LAN listener: others can call, so every call is logged.
        lan = resolve({"host": "0.0.0.0", "insecure_no_auth": True}, {}, {})
        self.assertTrue(Security(lan, Clock()).audit.log_calls)
        self.assertFalse(
            Security(resolve({"audit_log": "refusals", "host": "0.0.0.0"}, {}, {}), Clock()).audit.log_calls
        )
        self.assertFalse(
            Security(resolve({"api_key": ["k"], "audit_log": "refusals"}, {}, {}), Clock()).audit.log_calls
        )

    def test_reload(self) -> None:
        keys, allowed = Path(self.mktemp()), Path(self.mktemp())
        keys.write_text("alice:ka\n", encoding="utf-8")
        allowed.write_text("10.0.0.0/8\n", encoding="utf-8")
        settings = resolve({"api_key_file": str(keys), "allowed_ip_file": str(allowed)}, {}, {})
        security = Security(settings, Clock())
        gate = security.gate
        self.assertEqual(gate.keys.find("ka").name, "alice")  # type: ignore[union-attr]
        keys.write_text("bob:kb\n", encoding="utf-8")
        allowed.write_text("192.168.0.0/16\n", encoding="utf-8")
        self.assertTrue(security.reload())
        self.assertIsNone(gate.keys.find("ka"))
        self.assertEqual(gate.keys.find("kb").name, "bob")  # type: ignore[union-attr]
        self.assertIn("192.168.1.1", gate.allowed)
        # A broken file keeps what is in force.
        keys.write_text("bad name:x\n", encoding="utf-8")
        self.assertFalse(security.reload())
        self.assertEqual(gate.keys.find("kb").name, "bob")  # type: ignore[union-attr]
        # Emptying the key file would turn authentication off: refused.
        keys.write_text("", encoding="utf-8")
        self.assertFalse(security.reload())
        self.assertTrue(gate.keys)

    def test_bad_trusted_proxy(self) -> None:
        self.assertRaises(SecurityConfigError, Security, resolve({}, {}, {}).__class__(trusted_proxy=("x",)), Clock())
