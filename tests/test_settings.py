"""Tests for mcpd.config: precedence, the .env file, validation and the HTTP endpoints."""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from mcpd.config import KNOBS, ConfigError, Settings, read_env_file, resolve


def settings(
    flags: dict[str, Any] | None = None, environ: dict[str, str] | None = None, file: dict[str, str] | None = None
) -> Settings:
    return resolve(flags or {}, environ or {}, file or {})


class PrecedenceTests(SynchronousTestCase):
    """flag > environment > file > default, knob by knob."""

    # knob: (its environment variable, (raw value as a flag, in the environment, in the file))
    CASES: dict[str, tuple[str, tuple[Any, Any, Any]]] = {
        "port": ("PORT", ("9001", "9002", "9003")),
        "host": ("HOST", ("10.0.0.1", "10.0.0.2", "10.0.0.3")),
        "threads": ("THREADS", ("3", "4", "5")),
        "toolsets": ("TOOLSETS", ("server", "server, other", "a,b,,c")),
    }
    # knob: the parsed value from the flag, the environment, the file, and the default
    PARSED: dict[str, tuple[Any, Any, Any, Any]] = {
        "port": (9001, 9002, 9003, 8765),
        "host": ("10.0.0.1", "10.0.0.2", "10.0.0.3", "127.0.0.1"),
        "threads": (3, 4, 5, 10),
        # No default: mcpd.tap picks every built-in pack whose stores are configured.
        "toolsets": (("server",), ("server", "other"), ("a", "b", "c"), None),
    }

    def test_each_source_wins_over_the_ones_below(self) -> None:
        for name, (env, (flag_value, env_value, file_value)) in self.CASES.items():
            from_flag, from_env, from_file, default = self.PARSED[name]
            everywhere = settings({name: flag_value}, {env: env_value}, {env: file_value})
            self.assertEqual(getattr(everywhere, name), from_flag, name)
            self.assertEqual(getattr(settings({}, {env: env_value}, {env: file_value}), name), from_env, name)
            self.assertEqual(getattr(settings({}, {}, {env: file_value}), name), from_file, name)
            self.assertEqual(getattr(settings(), name), default, name)

    def test_repeatable_flags_win_over_the_environment(self) -> None:
        environ = {"TOOL_PACKS": "env.pack", "LISTEN": "tcp:1"}
        resolved = settings({"tool_pack": ["a.b", "c.d:pack"], "listen": ["tcp:2", "unix:/tmp/s"]}, environ)
        self.assertEqual(resolved.tool_pack, ("a.b", "c.d:pack"))
        self.assertEqual(resolved.listen, ("tcp:2", "unix:/tmp/s"))
        from_env = settings({"tool_pack": [], "listen": []}, environ)
        self.assertEqual((from_env.tool_pack, from_env.listen), (("env.pack",), ("tcp:1",)))

    def test_no_flags_no_environment_means_defaults(self) -> None:
        self.assertEqual(settings({knob.name: None for knob in KNOBS}), Settings())

    def test_knobs_and_settings_agree(self) -> None:
        fields = attrs.fields_dict(Settings)
        for knob in KNOBS:
            self.assertIn(knob.name, fields)
            self.assertEqual(fields[knob.name].default, knob.default, knob.name)

    def test_port_given_anywhere_is_remembered(self) -> None:
        self.assertFalse(settings().port_given)
        self.assertTrue(settings({"port": "8765"}).port_given)
        self.assertTrue(settings({}, {"PORT": "1"}).port_given)
        self.assertTrue(settings({}, {}, {"PORT": "1"}).port_given)

    def test_settings_are_frozen(self) -> None:
        self.assertRaises(attrs.exceptions.FrozenInstanceError, setattr, Settings(), "port", 1)


class ValidationTests(SynchronousTestCase):
    def assert_refused(
        self,
        message_start: str,
        flags: dict[str, Any] | None = None,
        environ: dict[str, str] | None = None,
        file: dict[str, str] | None = None,
    ) -> str:
        with self.assertRaises(ConfigError) as caught:
            settings(flags, environ, file)
        message = str(caught.exception)
        self.assertTrue(message.startswith(message_start), message)
        return message

    def test_bad_ports(self) -> None:
        self.assertIn("1 to 65535", self.assert_refused("--port:", {"port": "70000"}))
        self.assertIn("at least 1", self.assert_refused("--port:", {"port": "0"}))
        self.assertIn("'abc'", self.assert_refused("--port:", {"port": "abc"}))
        self.assert_refused("environment variable PORT:", environ={"PORT": "-5"})
        self.assert_refused("PORT in the --config file:", file={"PORT": "65536"})

    def test_bad_threads_and_timeouts(self) -> None:
        self.assertIn("-1", self.assert_refused("--threads:", {"threads": "-1"}))
        self.assert_refused("environment variable THREADS:", environ={"THREADS": "2.5"})
        self.assert_refused("--session-timeout:", {"session_timeout": "0"})
        self.assert_refused("environment variable SESSION_TIMEOUT:", environ={"SESSION_TIMEOUT": "soon"})
        self.assert_refused("--page-size:", {"page_size": "0"})

    def test_timeout_must_be_a_real_positive_number(self) -> None:
        self.assert_refused("--session-timeout:", {"session_timeout": "nan"})
        self.assertEqual(settings({"session_timeout": "0.5"}).session_timeout, 0.5)

    def test_a_bad_value_in_a_lower_source_is_ignored_when_overridden(self) -> None:
        self.assertEqual(settings({"port": "9000"}, {"PORT": "abc"}).port, 9000)


class EnvFileTests(SynchronousTestCase):
    def write(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def test_parses_comments_export_and_quotes(self) -> None:
        path = self.write(
            "# mcpd settings\n"
            "\n"
            "PORT=9100\n"
            "  export HOST = 0.0.0.0  \n"
            'TOOLSETS="server"\n'
            "TRACE_FILE='/tmp/my trace.jsonl'\n"
            "LISTEN=tcp:9200:interface=::1\n"
            "EMPTY=\n"
            "   # indented comment\n"
        )
        values = read_env_file(path)
        self.assertEqual(
            values,
            {
                "PORT": "9100",
                "HOST": "0.0.0.0",
                "TOOLSETS": "server",
                "TRACE_FILE": "/tmp/my trace.jsonl",
                "LISTEN": "tcp:9200:interface=::1",
                "EMPTY": "",
            },
        )
        resolved = resolve({}, {}, values)
        self.assertEqual((resolved.port, resolved.host, resolved.trace_file), (9100, "0.0.0.0", "/tmp/my trace.jsonl"))

    def test_bad_line_names_the_file_and_line(self) -> None:
        path = self.write("PORT=1\n# fine\nthis is not a setting\n")
        with self.assertRaises(ConfigError) as caught:
            read_env_file(path)
        message = str(caught.exception)
        self.assertIn(f"--config {path} line 3", message)
        self.assertIn("'this is not a setting'", message)
        for line in ("=value", "export =x"):
            self.assertRaises(ConfigError, read_env_file, self.write(line + "\n"))

    def test_missing_file(self) -> None:
        path = self.mktemp()
        with self.assertRaises(ConfigError) as caught:
            read_env_file(path)
        self.assertIn(f"--config {path}: cannot read it", str(caught.exception))


class FileReadingTests(SynchronousTestCase):
    """Every file an option names (config, key file, allowlist) fails the same readable way."""

    def test_a_binary_file_is_refused_by_name(self) -> None:
        from mcpd.security.addresses import AddressListError, read_address_file
        from mcpd.security.keys import KeyFileError, read_key_file

        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"PORT=\xff\xfe\x00 not text")
        for read, error, option in (
            (read_env_file, ConfigError, "--config"),
            (read_key_file, KeyFileError, "--api-key-file"),
            (read_address_file, AddressListError, "--allowed-ip-file"),
        ):
            raised = self.assertRaises(error, read, path)
            self.assertEqual(str(raised), f"{option} {path}: not UTF-8 text")


class EndpointTests(SynchronousTestCase):
    def test_default(self) -> None:
        self.assertEqual(settings().http_endpoints(), ["tcp:8765:interface=127.0.0.1"])

    def test_port_only(self) -> None:
        self.assertEqual(settings({"port": "9000"}).http_endpoints(), ["tcp:9000:interface=127.0.0.1"])

    def test_listen_only_replaces_the_default(self) -> None:
        listen = ["tcp:9001:interface=0.0.0.0", "unix:/tmp/mcpd.sock"]
        self.assertEqual(settings({"listen": listen}).http_endpoints(), listen)

    def test_port_and_listen(self) -> None:
        resolved = settings({"port": "9000", "host": "0.0.0.0", "listen": ["unix:/tmp/mcpd.sock"]})
        self.assertEqual(resolved.http_endpoints(), ["tcp:9000:interface=0.0.0.0", "unix:/tmp/mcpd.sock"])

    def test_ipv6_host_is_escaped_for_twisted(self) -> None:
        [description] = settings({"host": "::1"}).http_endpoints()
        self.assertEqual(description, "tcp:8765:interface=\\:\\:1")
        reactor = MemoryReactor()
        serverFromString(reactor, description).listen(Factory())
        [(port, _factory, _backlog, interface)] = reactor.tcpServers
        self.assertEqual((port, interface), (8765, "::1"))


class ProtocolKnobTests(SynchronousTestCase):
    """--client-timeout and --state-key (the key that signs 2026-07-28 requestState)."""

    def test_defaults(self) -> None:
        self.assertEqual((settings().client_timeout, settings().state_key), (60.0, None))

    def test_precedence_and_secrecy(self) -> None:
        key = "k" * 32
        chosen = settings({"state_key": "f" * 32}, {"STATE_KEY": key}, {"STATE_KEY": "x" * 40})
        self.assertEqual(chosen.state_key, "f" * 32)
        self.assertEqual(settings({}, {"STATE_KEY": key}, {"STATE_KEY": "x" * 40}).state_key, key)
        self.assertEqual(settings({}, {}, {"CLIENT_TIMEOUT": "2.5"}).client_timeout, 2.5)
        self.assertNotIn(key, repr(settings({}, {"STATE_KEY": key})))

    def test_short_keys_are_refused(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            settings({}, {"STATE_KEY": "short"})
        self.assertIn("STATE_KEY", str(caught.exception))


class StoreSettingsTests(SynchronousTestCase):
    """The index and embedding knobs: checked at start-up, secrets kept out of repr."""

    def test_the_index_defaults_to_milvus_lite_in_the_data_directory(self) -> None:
        self.assertEqual(settings().index_uri(), "./mcpd-data/milvus.db")
        self.assertEqual(settings({"data_dir": "/var/lib/mcpd"}).index_uri(), "/var/lib/mcpd/milvus.db")
        self.assertEqual(settings({}, {"MILVUS_URI": "http://milvus:19530"}).index_uri(), "http://milvus:19530")

    def test_bad_values_are_refused_naming_the_knob(self) -> None:
        cases = {
            "MILVUS_URI": "milvus:19530",
            "EMBEDDING_URL": "gpu:11434/api/embed",
            "EMBEDDING_API": "cohere",
            "EMBEDDING_RETRIES": "-1",
        }
        for env, value in cases.items():
            with self.assertRaises(ConfigError) as caught:
                settings({}, {env: value, "EMBEDDING_MODEL": "m"})
            self.assertIn(env, str(caught.exception))

    def test_an_embedding_url_needs_its_model(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            settings({}, {"EMBEDDING_URL": "http://gpu:8000/v1/embeddings"})
        self.assertIn("--embedding-model", str(caught.exception))

    def test_secrets_are_not_shown(self) -> None:
        shown = repr(settings({}, {"MILVUS_TOKEN": "root:hunter2", "EMBEDDING_API_KEY": "sk-secret"}))
        self.assertNotIn("hunter2", shown)
        self.assertNotIn("sk-secret", shown)
