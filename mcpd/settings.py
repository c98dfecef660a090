# -*- test-case-name: tests.test_settings -*-
"""Every configuration knob of mcpd, documented once, and the one frozen `Settings` value.

Each knob can be set by a command-line flag, an environment variable or a ``.env``-style file
given with ``--config``; the precedence is flag > environment > file > default.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs


class SettingError(ValueError):
    """A knob has a value mcpd cannot use; the message names the knob and what is wrong."""


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise ValueError("must be a TCP port number from 1 to 65535")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"must be a whole number, not {text!r}") from None
    if value < 1:
        raise ValueError(f"must be at least 1, not {value}")
    return value


def _percent(text: str) -> int:
    value = _positive_int(text)
    if value > 100:
        raise ValueError(f"must be a percentage from 1 to 100, not {value}")
    return value


def _whole_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"must be a whole number, not {text!r}") from None
    if value < 0:
        raise ValueError(f"must be 0 or more, not {value}")
    return value


def _db_url(text: str) -> str:
    scheme = text.partition(":")[0].lower()
    if not (scheme.startswith("sqlite") or scheme.startswith("mysql") or scheme.startswith("mariadb")):
        raise ValueError(f"must be a sqlite:/// or mysql+pymysql:// URL, not one starting {scheme + ':'!r}")
    return text


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"must be a number of seconds, not {text!r}") from None
    if not value > 0:  # also refuses nan
        raise ValueError(f"must be more than 0 seconds, not {value}")
    return value


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _text(text: str) -> str:
    return text


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"must be 1 or 0 (true or false), not {text!r}")


def _audit_choice(text: str) -> str:
    value = text.strip().lower()
    if value not in ("all", "refusals"):
        raise ValueError(f"must be all or refusals, not {text!r}")
    return value


def _state_key(text: str) -> str:
    if len(text) < 32:
        raise ValueError(f"must be at least 32 characters (it signs requestState), not {len(text)}")
    return text


def _log_format(text: str) -> str:
    value = text.strip().lower()
    if value not in ("text", "json"):
        raise ValueError(f"must be text or json, not {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"must be a whole number, not {text!r}") from None
    if value < 0:
        raise ValueError(f"must be 0 or more, not {value}")
    return value


def _milvus_uri(text: str) -> str:
    value = text.strip()
    if value.startswith(("http://", "https://", "tcp://", "unix:")) or value.endswith(".db"):
        return value
    raise ValueError(
        f"must be a Milvus server URL (http://host:19530) or a Milvus Lite file ending in .db, not {text!r}"
    )


def _http_url(text: str) -> str:
    from urllib.parse import urlsplit

    value = text.strip()
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"must be an http:// or https:// URL, not {text!r}")
    return value


def _embedding_api(text: str) -> str:
    value = text.strip().lower()
    if value not in ("openai", "ollama"):
        raise ValueError(f"must be openai or ollama, not {text!r}")
    return value


def _networks(text: str) -> tuple[str, ...]:
    import ipaddress

    entries = _names(text)
    for entry in entries:
        try:
            ipaddress.ip_network(entry.strip("[]"), strict=False)
        except ValueError:
            raise ValueError(f"{entry!r} is not an IP address or CIDR range") from None
    return entries


@attrs.frozen
class Knob:
    """One setting: its attribute, flag, environment variable, parser, default and help."""

    name: str
    env: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    repeatable: bool = False
    # A flag without a value (--insecure-no-auth); its environment variable takes 1/0, true/false.
    switch: bool = False

    @property
    def flag(self) -> str:
        return self.name.replace("_", "-")


KNOBS: tuple[Knob, ...] = (
    Knob("host", "HOST", _text, "127.0.0.1", "Interface for --port (0.0.0.0 or :: serves the LAN)."),
    Knob("port", "PORT", _port, 8765, "TCP port for Streamable HTTP."),
    Knob(
        "listen",
        "LISTEN",
        _names,
        (),
        "A Twisted endpoint string to serve HTTP on, e.g. tcp:8765:interface=0.0.0.0; repeatable "
        "(comma-separated in the environment). Given without --port, only these are served.",
        repeatable=True,
    ),
    Knob(
        "toolsets",
        "TOOLSETS",
        _names,
        None,
        "Built-in tool packs to serve, comma-separated (server, tasks, notes). Default: every "
        "built-in pack whose stores are configured.",
    ),
    Knob(
        "tool_pack",
        "TOOL_PACKS",
        _names,
        (),
        "Extra tool pack by dotted module name (module[:attribute]); repeatable.",
        repeatable=True,
    ),
    Knob("threads", "THREADS", _positive_int, 10, "Size of the thread pool that runs blocking tools."),
    Knob(
        "session_timeout",
        "SESSION_TIMEOUT",
        _seconds,
        1800.0,
        "Seconds after which an idle legacy HTTP session (Mcp-Session-Id) is ended.",
    ),
    Knob("page_size", "PAGE_SIZE", _positive_int, 100, "Items per page of tools/list and other lists."),
    Knob(
        "max_message_size",
        "MAX_MESSAGE_SIZE",
        _positive_int,
        4 * 1024 * 1024,
        "Largest JSON-RPC message accepted, in bytes (stdio line or HTTP body).",
    ),
    Knob(
        "max_batch",
        "MAX_BATCH",
        _positive_int,
        100,
        "Most messages one JSON-RPC batch may hold (protocol 2025-03-26 only; a larger batch is refused "
        "whole); their answers together may take at most --max-message-size bytes.",
    ),
    Knob(
        "max_write_buffer",
        "MAX_WRITE_BUFFER",
        _positive_int,
        8 * 1024 * 1024,
        "Bytes of output one client may leave unread: a connection whose client does not read (an HTTP, "
        "SSE or WebSocket connection; stdout in --stdio mode) is no longer read from once its buffer is "
        "full, and dropped past this many more bytes (--stdio stops).",
    ),
    Knob(
        "sse_replay",
        "SSE_REPLAY",
        _positive_int,
        256,
        "Events kept per SSE stream for Last-Event-ID resumption.",
    ),
    Knob(
        "sse_keepalive",
        "SSE_KEEPALIVE",
        _seconds,
        15.0,
        "Seconds between keep-alive comments on open SSE streams (Streamable HTTP and legacy /sse) "
        "and between pings on WebSocket connections: proxies keep them, dead clients are found.",
    ),
    Knob(
        "trace_file",
        "TRACE_FILE",
        _text,
        None,
        "Write every JSON-RPC message in and out to this file as JSON lines (debugging).",
    ),
    # -- security and limits (mcpd.web.security) --
    Knob(
        "api_key",
        "API_KEYS",
        _names,
        (),
        "An API key clients must send (Authorization: Bearer KEY, or X-API-Key: KEY); repeatable "
        "(comma-separated in the environment). Keys on the command line show in ps: prefer --api-key-file.",
        repeatable=True,
    ),
    Knob(
        "api_key_file",
        "API_KEY_FILE",
        _text,
        None,
        "File of API keys, one a line: KEY, NAME:KEY, NAME:KEY:SCOPES or NAME:KEY:SCOPES:TENANT (scopes "
        "comma-separated: read, write, admin, or tool and toolset names; none = admin; the tenant whose "
        "records the key sees, default: default). Reloaded on SIGHUP.",
    ),
    Knob(
        "insecure_no_auth",
        "INSECURE_NO_AUTH",
        _bool,
        False,
        "Serve clients beyond loopback without API keys (a trusted network only).",
        switch=True,
    ),
    Knob(
        "allowed_ip",
        "ALLOWED_IPS",
        _networks,
        (),
        "Only these client addresses or CIDR ranges (IPv4 or IPv6) may connect; repeatable "
        "(comma-separated in the environment). Others get 403.",
        repeatable=True,
    ),
    Knob(
        "allowed_ip_file",
        "ALLOWED_IP_FILE",
        _text,
        None,
        "File of allowed addresses and CIDR ranges, one a line, added to --allowed-ip. Reloaded on SIGHUP.",
    ),
    Knob(
        "trusted_proxy",
        "TRUSTED_PROXIES",
        _networks,
        (),
        "A reverse proxy (address or CIDR) whose X-Forwarded-For / X-Real-IP is believed; repeatable. "
        "From other peers those headers are ignored.",
        repeatable=True,
    ),
    Knob(
        "cors_origin",
        "CORS_ORIGINS",
        _names,
        (),
        "A browser origin allowed to call mcpd (https://app.example), or * for any; repeatable. "
        "Answers CORS preflights and exposes Mcp-Session-Id.",
        repeatable=True,
    ),
    Knob(
        "rate_limit",
        "RATE_LIMIT",
        _positive_int,
        100,
        "Requests allowed per --rate-window, per API key (per client address without keys; loopback exempt).",
    ),
    Knob("rate_window", "RATE_WINDOW", _seconds, 60.0, "The rate-limit window, in seconds."),
    Knob("rate_burst", "RATE_BURST", _positive_int, None, "Largest burst of requests (default: --rate-limit)."),
    Knob(
        "max_connections", "MAX_CONNECTIONS", _positive_int, 1000, "Open HTTP connections allowed; the next gets 503."
    ),
    Knob(
        "max_connections_per_ip",
        "MAX_CONNECTIONS_PER_IP",
        _positive_int,
        None,
        "Open HTTP connections allowed from one address (trusted proxies exempt); the next gets 503.",
    ),
    Knob(
        "max_streams_per_key",
        "MAX_STREAMS_PER_KEY",
        _positive_int,
        16,
        "Long-lived streams allowed per API key (per address without keys): SSE GET streams, /sse, WebSockets, "
        "subscriptions/listen (over HTTP, WebSocket or stdio) and SSE responses; the next gets 429.",
    ),
    Knob(
        "max_sessions",
        "MAX_SESSIONS",
        _positive_int,
        10_000,
        "Sessions held at once (Streamable HTTP Mcp-Session-Id, /sse, WebSocket); a new one over it gets 503.",
    ),
    Knob(
        "share_per_key",
        "SHARE_PER_KEY",
        _percent,
        25,
        "Percent of each server-wide budget (connections, sessions, tasks, subscriptions, SSE replay buffers) "
        "one API key may hold (one address without keys); over it, 429.",
    ),
    Knob(
        "header_timeout",
        "HEADER_TIMEOUT",
        _seconds,
        10.0,
        "Seconds a client has to send a request's headers (from its first byte, or from connecting).",
    ),
    Knob(
        "request_timeout",
        "REQUEST_TIMEOUT",
        _seconds,
        30.0,
        "Seconds a client has to send a request's body (or the rest of a WebSocket message split over frames).",
    ),
    Knob(
        "tool_timeout",
        "TOOL_TIMEOUT",
        _seconds,
        None,
        "Cancel a tool call after this many seconds and tell the client (default: no limit).",
    ),
    Knob(
        "client_timeout",
        "CLIENT_TIMEOUT",
        _seconds,
        60.0,
        "Seconds a client has to answer a request mcpd sends it (elicitation, sampling, roots; legacy sessions).",
    ),
    Knob(
        "state_key",
        "STATE_KEY",
        _state_key,
        None,
        "Secret (at least 32 characters) that signs 2026-07-28 requestState, so instances behind one load "
        "balancer accept each other's; default: random per process. Prefer the environment or --config to a flag.",
    ),
    Knob("audit_buffer", "AUDIT_BUFFER", _positive_int, 1000, "Audit records kept in memory."),
    Knob(
        "audit_log",
        "AUDIT_LOG",
        _audit_choice,
        None,
        "Which audit records are logged as JSON lines: all, or refusals (every refusal, denial and "
        "failed call, not the tool calls that went well). Default: all with API keys or a listener "
        "beyond loopback, else refusals.",
    ),
    # -- the SQL store (mcpd.stores.sql); its SQLite file is in --data-dir --
    Knob(
        "db_url",
        "DB_URL",
        _db_url,
        None,
        "SQLAlchemy URL of the SQL store: sqlite:///PATH or mysql+pymysql://USER@HOST:3306/DB "
        "(MySQL 8 / MariaDB 10.11+). Default: sqlite:///DATA_DIR/mcpd.sqlite3.",
    ),
    Knob(
        "db_password",
        "DB_PASSWORD",
        _text,
        None,
        "Password of the --db-url user; shows in ps as a flag: prefer DB_PASSWORD or --db-password-file.",
    ),
    Knob(
        "db_password_file",
        "DB_PASSWORD_FILE",
        _text,
        None,
        "File holding the --db-url user's password (its first line).",
    ),
    Knob("db_pool_size", "DB_POOL_SIZE", _positive_int, 5, "Connections the SQL store keeps open."),
    Knob(
        "db_max_overflow",
        "DB_MAX_OVERFLOW",
        _whole_number,
        5,
        "Connections the SQL store may open beyond --db-pool-size under load; its thread pool has "
        "--db-pool-size + --db-max-overflow threads.",
    ),
    Knob(
        "db_pool_recycle",
        "DB_POOL_RECYCLE",
        _seconds,
        3600.0,
        "Seconds after which a pooled connection is replaced (keep it below MySQL's wait_timeout).",
    ),
    Knob(
        "db_pool_pre_ping",
        "DB_POOL_PRE_PING",
        _bool,
        True,
        "Test a pooled connection before each use, so a restarted server is reconnected to (1 or 0).",
    ),
    Knob(
        "db_timeout",
        "DB_TIMEOUT",
        _seconds,
        5.0,
        "Seconds to connect to the database or wait for a lock before a call is answered that it is unavailable.",
    ),
    Knob(
        "db_statement_timeout",
        "DB_STATEMENT_TIMEOUT",
        _seconds,
        10.0,
        "Longest a single SQL statement may run (MariaDB max_statement_time, MySQL max_execution_time).",
    ),
    # -- observability and lifecycle (mcpd.observe, mcpd.lifecycle) --
    Knob(
        "public_metrics",
        "PUBLIC_METRICS",
        _bool,
        False,
        "Serve /stats, /metrics and /dashboard to any client that may connect; by default clients "
        "beyond loopback need an admin-scoped API key for them (/health and /ready are always open).",
        switch=True,
    ),
    Knob(
        "log_format",
        "LOG_FORMAT",
        _log_format,
        "text",
        "Log lines as text, or as JSON lines (request id, key, peer, method, tool, duration, outcome).",
    ),
    Knob(
        "logfile",
        "LOG_FILE",
        _text,
        None,
        "Append the log to this file (default: stdout under twistd, stderr for the mcpd command and in --stdio mode).",
    ),
    Knob(
        "shutdown_timeout",
        "SHUTDOWN_TIMEOUT",
        _seconds,
        30.0,
        "On SIGTERM / SIGINT, seconds the calls in flight have to finish before they are cancelled.",
    ),
    # -- stores (mcpd.stores) --
    Knob(
        "data_dir",
        "DATA_DIR",
        _text,
        "./mcpd-data",
        "Directory of the embedded stores (the SQLite database, the Milvus Lite index), created with mode 0700.",
    ),
    Knob(
        "milvus_uri",
        "MILVUS_URI",
        _milvus_uri,
        None,
        "The search index of the kb and memory packs: a Milvus server (http://host:19530, or milvus-lite "
        "server), or a Milvus Lite file. Default: milvus.db in --data-dir, inside mcpd.",
    ),
    Knob(
        "milvus_token",
        "MILVUS_TOKEN",
        _text,
        None,
        "Token (user:password or API key) for a Milvus server. Prefer the environment or --config to a flag.",
    ),
    Knob("milvus_timeout", "MILVUS_TIMEOUT", _seconds, 10.0, "Seconds one call to Milvus may take."),
    Knob(
        "embedding_url",
        "EMBEDDING_URL",
        _http_url,
        None,
        "The embedding service for semantic and hybrid search: an OpenAI-compatible endpoint "
        "(http://host:8000/v1/embeddings: vLLM, TEI, LocalAI, llama.cpp, OpenAI) or Ollama's "
        "(http://host:11434/api/embed). Without it, search is keyword (BM25) only.",
    ),
    Knob(
        "embedding_model",
        "EMBEDDING_MODEL",
        _text,
        None,
        "The model the embedding service runs (needed with --embedding-url).",
    ),
    Knob(
        "embedding_api",
        "EMBEDDING_API",
        _embedding_api,
        None,
        "openai or ollama (default: ollama when the URL path ends in /api/embed, else openai).",
    ),
    Knob(
        "embedding_api_key",
        "EMBEDDING_API_KEY",
        _text,
        None,
        "Bearer key for the embedding service. Prefer the environment or --config to a flag.",
    ),
    Knob("embedding_batch", "EMBEDDING_BATCH", _positive_int, 32, "Texts sent to the embedding service per request."),
    Knob("embedding_timeout", "EMBEDDING_TIMEOUT", _seconds, 30.0, "Seconds one embedding request may take."),
    Knob(
        "embedding_retries",
        "EMBEDDING_RETRIES",
        _count,
        3,
        "Retries of an embedding request that timed out or got 429/5xx, with exponential backoff.",
    ),
    Knob(
        "embedding_query_prefix",
        "EMBEDDING_QUERY_PREFIX",
        _text,
        "",
        "Text put before each search query, for models trained with one (e5: 'query: ', nomic: 'search_query: ').",
    ),
    Knob(
        "embedding_document_prefix",
        "EMBEDDING_DOCUMENT_PREFIX",
        _text,
        "",
        "Text put before each indexed chunk (e5: 'passage: ', nomic: 'search_document: ').",
    ),
)
KNOBS_BY_NAME = {knob.name: knob for knob in KNOBS}


@attrs.frozen
class Settings:
    """The whole configuration of one mcpd process."""

    host: str = "127.0.0.1"
    port: int = 8765
    listen: tuple[str, ...] = ()
    toolsets: tuple[str, ...] | None = None
    tool_pack: tuple[str, ...] = ()
    threads: int = 10
    session_timeout: float = 1800.0
    page_size: int = 100
    max_message_size: int = 4 * 1024 * 1024
    max_batch: int = 100
    max_write_buffer: int = 8 * 1024 * 1024
    sse_replay: int = 256
    sse_keepalive: float = 15.0
    trace_file: str | None = None
    api_key: tuple[str, ...] = attrs.field(default=(), repr=False)  # secrets: never shown
    api_key_file: str | None = None
    insecure_no_auth: bool = False
    allowed_ip: tuple[str, ...] = ()
    allowed_ip_file: str | None = None
    trusted_proxy: tuple[str, ...] = ()
    cors_origin: tuple[str, ...] = ()
    rate_limit: int = 100
    rate_window: float = 60.0
    rate_burst: int | None = None
    max_connections: int = 1000
    max_connections_per_ip: int | None = None
    max_streams_per_key: int = 16
    max_sessions: int = 10_000
    share_per_key: int = 25
    header_timeout: float = 10.0
    request_timeout: float = 30.0
    tool_timeout: float | None = None
    client_timeout: float = 60.0
    state_key: str | None = attrs.field(default=None, repr=False)  # a secret: never shown
    audit_buffer: int = 1000
    audit_log: str | None = None
    public_metrics: bool = False
    log_format: str = "text"
    logfile: str | None = None
    shutdown_timeout: float = 30.0
    data_dir: str = "./mcpd-data"
    milvus_uri: str | None = None
    milvus_token: str | None = attrs.field(default=None, repr=False)  # a secret: never shown
    milvus_timeout: float = 10.0
    embedding_url: str | None = None
    embedding_model: str | None = None
    embedding_api: str | None = None
    embedding_api_key: str | None = attrs.field(default=None, repr=False)  # a secret: never shown
    embedding_batch: int = 32
    embedding_timeout: float = 30.0
    embedding_retries: int = 3
    embedding_query_prefix: str = ""
    embedding_document_prefix: str = ""
    db_url: str | None = attrs.field(default=None, repr=False)  # may hold a password
    db_password: str | None = attrs.field(default=None, repr=False)  # a secret: never shown
    db_password_file: str | None = None
    db_pool_size: int = 5
    db_max_overflow: int = 5
    db_pool_recycle: float = 3600.0
    db_pool_pre_ping: bool = True
    db_timeout: float = 5.0
    db_statement_timeout: float = 10.0
    stdio: bool = False
    port_given: bool = False

    def index_uri(self) -> str:
        """Where the search index lives: --milvus-uri, else Milvus Lite in the data directory."""
        return self.milvus_uri or os.path.join(self.data_dir, "milvus.db")

    def http_endpoints(self) -> list[str]:
        """The endpoint strings HTTP is served on."""
        endpoints = list(self.listen)
        if self.port_given or not endpoints:
            host = self.host.replace(":", "\\:")
            endpoints.insert(0, f"tcp:{self.port}:interface={host}")
        return endpoints


def read_lines(path: str, option: str, error: type[Exception]) -> list[tuple[int, str]]:
    """The numbered lines of the text file an option names; ``error`` naming the option and the
    file when it cannot be read (missing, unreadable, not UTF-8 text)."""
    try:
        with open(path, encoding="utf-8") as f:
            return list(enumerate(f.read().splitlines(), 1))
    except OSError as e:
        raise error(f"{option} {path}: cannot read it ({e.strerror})") from None
    except UnicodeDecodeError:
        raise error(f"{option} {path}: not UTF-8 text") from None


def read_env_file(path: str) -> dict[str, str]:
    """Read a ``.env``-style file: ``NAME=value`` lines, ``#`` comments, optional quotes."""
    values: dict[str, str] = {}
    for number, line in read_lines(path, "--config", SettingError):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        name, sep, value = line.partition("=")
        if not sep or not name.strip():
            raise SettingError(f"--config {path} line {number}: expected NAME=value, got {line!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[name.strip()] = value
    return values


def resolve(
    flags: Mapping[str, Any],
    environ: Mapping[str, str],
    file_values: Mapping[str, str],
    stdio: bool = False,
) -> Settings:
    """Build `Settings` from flags (already parsed; None or empty = not given), the
    environment and a config file, in that order of precedence."""
    values: dict[str, Any] = {}
    for knob in KNOBS:
        given = flags.get(knob.name)
        if given is not None and given != [] and given != ():
            raw: Any = given
            where = f"--{knob.flag}"
        elif knob.env in environ:
            raw, where = environ[knob.env], f"environment variable {knob.env}"
        elif knob.env in file_values:
            raw, where = file_values[knob.env], f"{knob.env} in the --config file"
        else:
            values[knob.name] = knob.default
            continue
        try:
            values[knob.name] = _parse(knob, raw)
        except ValueError as e:
            raise SettingError(f"{where}: {e}") from None
    port_given = flags.get("port") is not None or "PORT" in environ or "PORT" in file_values
    if values["embedding_url"] and not values["embedding_model"]:
        raise SettingError("--embedding-url needs --embedding-model (EMBEDDING_MODEL): the model the service runs")
    return Settings(**values, stdio=stdio, port_given=port_given)


def _parse(knob: Knob, raw: Any) -> Any:
    if isinstance(raw, str):
        return knob.parse(raw)
    if isinstance(raw, Sequence):  # a repeatable flag given several times
        parsed: list[Any] = []
        for item in raw:
            value = knob.parse(item)
            parsed.extend(value if isinstance(value, tuple) else (value,))
        return tuple(parsed)
    return raw
