"""Tests for `mcpd.security.layer` and the security knobs: settings to policy, SIGHUP reloads."""

from __future__ import annotations

from pathlib import Path

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mcpd.config import ConfigError, Settings, resolve
from mcpd.protocol.ledger import STREAM, Ledger
from mcpd.security.layer import Security, SecurityConfigError
from mcpd.security.scopes import ScopePolicy, narrowed
from mcpd.stores.memory import MemoryBucketStore
from mcpd.tap import Options
from mcpd.tools.pack import ToolRegistry


class KnobTests(SynchronousTestCase):
    def test_switch_from_flag_and_environment(self) -> None:
        options = Options()
        options.parseOptions(["--insecure-no-auth"])
        assert options.settings is not None
        self.assertTrue(options.settings.insecure_no_auth)
        self.assertTrue(resolve({}, {"INSECURE_NO_AUTH": "1"}, {}).insecure_no_auth)
        self.assertFalse(resolve({"insecure_no_auth": None}, {}, {}).insecure_no_auth)
        self.assertRaises(ConfigError, resolve, {}, {"INSECURE_NO_AUTH": "maybe"}, {})

    def test_repeatable_and_environment(self) -> None:
        options = Options()
        options.parseOptions(["--api-key", "k1", "--api-key", "k2", "--allowed-ip", "10.0.0.0/8"])
        assert options.settings is not None
        self.assertEqual(options.settings.api_key, ("k1", "k2"))
        self.assertNotIn("k1", repr(options.settings))
        settings = resolve({}, {"API_KEYS": "a,b", "ALLOWED_IPS": "::1, 10.0.0.0/8"}, {})
        self.assertEqual((settings.api_key, settings.allowed_ip), (("a", "b"), ("::1", "10.0.0.0/8")))
        self.assertRaises(ConfigError, resolve, {}, {"ALLOWED_IPS": "10.0.0.300"}, {})
        self.assertRaises(ConfigError, resolve, {}, {"AUDIT_LOG": "some"}, {})

    def test_bad_key_file_stops_start_up(self) -> None:
        from twisted.python.usage import UsageError

        path = Path(self.mktemp())
        path.write_text("bad name:key\n", encoding="utf-8")
        e = self.assertRaises(UsageError, Options().parseOptions, ["--api-key-file", str(path)])
        self.assertIn("line 1", str(e))


class SecurityTests(SynchronousTestCase):
    def test_scopes_only_with_keys(self) -> None:
        registry = ToolRegistry()
        self.assertIsNone(Security(resolve({}, {}, {}), Clock(), MemoryBucketStore(Clock())).scope_policy(registry))
        policy = Security(resolve({"api_key": ["k"]}, {}, {}), Clock(), MemoryBucketStore(Clock())).scope_policy(
            registry
        )
        self.assertIsInstance(policy, ScopePolicy)

    def test_audit_log_default(self) -> None:
        self.assertFalse(Security(resolve({}, {}, {}), Clock(), MemoryBucketStore(Clock())).audit.log_calls)
        self.assertTrue(
            Security(resolve({"api_key": ["k"]}, {}, {}), Clock(), MemoryBucketStore(Clock())).audit.log_calls
        )
        # No keys but a LAN listener: others can call, so every call is logged.
        lan = resolve({"host": "0.0.0.0", "insecure_no_auth": True}, {}, {})
        self.assertTrue(Security(lan, Clock(), MemoryBucketStore(Clock())).audit.log_calls)
        self.assertFalse(
            Security(
                resolve({"audit_log": "refusals", "host": "0.0.0.0"}, {}, {}), Clock(), MemoryBucketStore(Clock())
            ).audit.log_calls
        )
        self.assertFalse(
            Security(
                resolve({"api_key": ["k"], "audit_log": "refusals"}, {}, {}), Clock(), MemoryBucketStore(Clock())
            ).audit.log_calls
        )
        # A persisted trail (the SQL store's, server.audit) keeps every call: the log, only the
        # refusals and failures, unless every call is asked for.
        persisted: list[object] = []
        self.assertFalse(
            Security(
                resolve({"api_key": ["k"]}, {}, {}), Clock(), MemoryBucketStore(Clock()), persist_audit=persisted.append
            ).audit.log_calls
        )
        self.assertTrue(
            Security(
                resolve({"api_key": ["k"], "audit_log": "all"}, {}, {}),
                Clock(),
                MemoryBucketStore(Clock()),
                persist_audit=persisted.append,
            ).audit.log_calls
        )

    def test_reload(self) -> None:
        keys, allowed = Path(self.mktemp()), Path(self.mktemp())
        keys.write_text("alice:ka\n", encoding="utf-8")
        allowed.write_text("10.0.0.0/8\n", encoding="utf-8")
        settings = resolve({"api_key_file": str(keys), "allowed_ip_file": str(allowed)}, {}, {})
        security = Security(settings, Clock(), MemoryBucketStore(Clock()))
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
        self.assertRaises(
            SecurityConfigError, Security, Settings(trusted_proxy=("x",)), Clock(), MemoryBucketStore(Clock())
        )


class ReloadEndsTests(SynchronousTestCase):
    """A reload applies at once to everything open, through the ledger."""

    def setUp(self) -> None:
        self.keys, self.allowed = Path(self.mktemp()), Path(self.mktemp())
        self.keys.write_text("alice:ka\nbob:kb\ncarol:kc:read\n", encoding="utf-8")
        self.allowed.write_text("10.0.0.0/8\n", encoding="utf-8")
        settings = resolve({"api_key_file": str(self.keys), "allowed_ip_file": str(self.allowed)}, {}, {})
        self.ledger = Ledger()
        self.security = Security(settings, Clock(), MemoryBucketStore(Clock()), ledger=self.ledger)
        self.told: list[tuple[str, ...]] = []
        for name in ("alice", "bob", "carol"):
            self.ledger.claim(
                f"key:{name}",
                STREAM,
                peer="10.1.1.1",
                end=lambda why, name=name: self.told.append(("ended", name, why)),
                rescope=lambda scopes, narrowed, name=name: self.told.append(
                    ("rescoped", name, ",".join(sorted(scopes)), str(narrowed))
                ),
            )

    def test_revoked_and_rotated_keys_end_rescoped_keys_change(self) -> None:
        # alice is gone, bob's secret changed, carol went from read to admin.
        self.keys.write_text("bob:kb2\ncarol:kc:admin\n", encoding="utf-8")
        self.assertTrue(self.security.reload())
        self.assertEqual(
            self.told,
            [
                ("ended", "alice", "the API key was revoked"),
                ("ended", "bob", "the API key was revoked"),
                ("rescoped", "carol", "admin", "False"),
            ],
        )
        self.told.clear()
        self.keys.write_text("bob:kb2\ncarol:kc:read\n", encoding="utf-8")
        self.assertTrue(self.security.reload())
        self.assertEqual(self.told, [("rescoped", "carol", "read", "True")])

    def test_a_key_moved_to_another_tenant_ends(self) -> None:
        # What carol holds was made under tenant default; her scopes changed too, but a key that
        # moved is ended, not rescoped. alice moves back and forth with the same secret.
        self.keys.write_text("alice:ka:admin:ta\nbob:kb\ncarol:kc:admin:tb\n", encoding="utf-8")
        self.assertTrue(self.security.reload())
        moved = "the API key moved to another tenant"
        self.assertEqual(self.told, [("ended", "alice", moved), ("ended", "carol", moved)])

    def test_an_address_no_longer_allowed(self) -> None:
        self.ledger.claim("key:alice", STREAM, peer="192.0.2.1", end=lambda why: self.told.append(("other", why)))
        self.allowed.write_text("192.0.2.0/24\n", encoding="utf-8")
        self.assertTrue(self.security.reload())
        self.assertEqual(
            sorted(self.told),
            [("ended", name, "its address is no longer allowed") for name in ("alice", "bob", "carol")],
        )

    def test_a_refused_reload_ends_nothing(self) -> None:
        self.keys.write_text("bad name:x\n", encoding="utf-8")
        self.assertFalse(self.security.reload())
        self.assertEqual(self.told, [])


class NarrowedTests(SynchronousTestCase):
    def test_what_counts_as_losing_a_scope(self) -> None:
        cases = [
            ({"admin"}, {"read"}, True),
            ({"read"}, {"admin"}, False),
            ({"read"}, {"write"}, False),
            ({"write"}, {"read"}, True),
            ({"read", "notes"}, {"read"}, True),
            ({"read"}, {"read", "notes"}, False),
        ]
        for old, new, expected in cases:
            self.assertEqual(narrowed(frozenset(old), frozenset(new)), expected, (old, new))
