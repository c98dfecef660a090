"""Tests for `mcpd.security.keys`: key files, digests, constant-time recognition, names."""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from mcpd.security.keys import APIKey, KeyFileError, KeyRing, load_keys, parse_key_line, read_key_file, short_hash


class KeyTests(SynchronousTestCase):
    def test_unnamed_key_named_by_short_hash(self) -> None:
        key = APIKey.from_secret("s3cret")
        self.assertEqual(key.name, short_hash("s3cret"))
        self.assertRegex(key.name, r"^key-[0-9a-f]{8}$")
        self.assertEqual(key.scopes, frozenset({"admin"}))

    def test_secret_never_in_repr(self) -> None:
        key = APIKey.from_secret("s3cret", "alice", ["read"])
        self.assertNotIn("s3cret", repr(key))
        self.assertNotIn("s3cret", repr(KeyRing([key]).keys))

    def test_blank_or_spaced_keys_refused(self) -> None:
        for bad in ("", "a b"):
            self.assertRaises(ValueError, APIKey.from_secret, bad)

    def test_find(self) -> None:
        ring = KeyRing([APIKey.from_secret("one", "a"), APIKey.from_secret("two", "b")])
        self.assertEqual(ring.find("two").name, "b")  # type: ignore[union-attr]
        self.assertIsNone(ring.find("three"))
        self.assertIsNone(ring.find(""))
        self.assertIsNone(KeyRing().find("one"))
        self.assertFalse(KeyRing())

    def test_lines(self) -> None:
        self.assertIsNone(parse_key_line("  # comment"))
        self.assertIsNone(parse_key_line(""))
        bare = parse_key_line("k1")
        assert bare is not None
        self.assertEqual(bare.scopes, frozenset({"admin"}))
        named = parse_key_line("ci:k2:read, tests.record ,notes")
        assert named is not None
        self.assertEqual((named.name, named.scopes), ("ci", frozenset({"read", "tests.record", "notes"})))
        self.assertEqual(parse_key_line("bob:k3").name, "bob")  # type: ignore[union-attr]
        self.assertEqual(named.tenant, "default")
        tenanted = parse_key_line("acme-ci:k5:write:acme")
        assert tenanted is not None
        self.assertEqual((tenanted.name, tenanted.scopes, tenanted.tenant), ("acme-ci", frozenset({"write"}), "acme"))
        admin_of = parse_key_line("ops:k6::acme")  # no scopes: admin, of tenant acme
        assert admin_of is not None
        self.assertEqual((admin_of.scopes, admin_of.tenant), (frozenset({"admin"}), "acme"))
        self.assertRaises(ValueError, parse_key_line, "a:b:c:d:e")
        self.assertRaises(ValueError, parse_key_line, "a:b:c:bad tenant")
        self.assertRaises(ValueError, parse_key_line, "bad name:k4")

    def test_file(self) -> None:
        path = Path(self.mktemp())
        path.write_text("# team keys\nalice:ka:read\n\nkb\n", encoding="utf-8")
        keys = read_key_file(str(path))
        self.assertEqual([key.name for key in keys], ["alice", short_hash("kb")])
        ring = load_keys(["kc"], str(path))
        self.assertEqual(len(ring), 3)
        self.assertEqual(ring.find("kc").name, short_hash("kc"))  # type: ignore[union-attr]

    def test_file_errors_name_the_line_not_the_key(self) -> None:
        path = Path(self.mktemp())
        path.write_text("alice:ka\nthe bad:secret-value\n", encoding="utf-8")
        e = self.assertRaises(KeyFileError, read_key_file, str(path))
        self.assertIn("line 2", str(e))
        self.assertNotIn("secret-value", str(e))
        path.write_text("alice:ka\nalice:kb\n", encoding="utf-8")
        self.assertIn("used twice", str(self.assertRaises(KeyFileError, read_key_file, str(path))))
        self.assertIn("cannot read", str(self.assertRaises(KeyFileError, read_key_file, str(path) + ".missing")))
