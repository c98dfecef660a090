# -*- test-case-name: tests.test_settings -*-
"""The one frozen `Settings` value of a process, resolved from flags, the environment and a
``.env``-style file (precedence: flag > environment > file > default)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from mcpd.config import observe, packs, security, server, stores
from mcpd.config.knob import ConfigError, Knob, read_lines

# Every knob, section by section (README lists them in this order).
SECTIONS: dict[str, tuple[Knob, ...]] = {
    module.SECTION: module.KNOBS for module in (server, packs, security, observe, stores)
}
KNOBS: tuple[Knob, ...] = tuple(knob for knobs in SECTIONS.values() for knob in knobs)
KNOBS_BY_NAME = {knob.name: knob for knob in KNOBS}


@attrs.frozen
class Settings:
    """The whole configuration of one mcpd process."""

    host: str = "127.0.0.1"
    port: int = 8765
    listen: tuple[str, ...] = ()
    toolsets: tuple[str, ...] | None = None  # None: every built-in pack whose stores run
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
    audit_retention: int = 90
    audit_log: str | None = None
    public_metrics: bool = False
    log_format: str = "text"
    logfile: str | None = None
    shutdown_timeout: float = 30.0
    data_dir: str = "./mcpd-data"
    milvus_uri: str | None = None
    milvus_token: str | None = attrs.field(default=None, repr=False)  # a secret: never shown
    milvus_timeout: float = 10.0
    milvus_prefix: str = "mcpd_"
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
    redis_url: str | None = attrs.field(default=None, repr=False)  # may hold a password
    redis_password: str | None = attrs.field(default=None, repr=False)  # a secret: never shown
    redis_password_file: str | None = None
    redis_ca_file: str | None = None
    redis_timeout: float = 2.0
    redis_prefix: str = "mcpd:"
    cache_default_ttl: int = 3600
    cache_max_ttl: int = 604800
    cache_max_value: int = 65536
    cache_max_keys: int = 100_000
    # NAME=URL pairs; a URL may hold a password: never shown.
    sql_source: tuple[tuple[str, str], ...] = attrs.field(default=(), repr=False)
    sql_password_file: tuple[tuple[str, str], ...] = ()
    # NAME -> password, from SQL_PASSWORD_<NAME> (environment or --config file): never shown.
    sql_passwords: tuple[tuple[str, str], ...] = attrs.field(default=(), repr=False)
    sql_timeout: float = 10.0
    sql_connections: int = 4
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


def read_env_file(path: str) -> dict[str, str]:
    """Read a ``.env``-style file: ``NAME=value`` lines, ``#`` comments, optional quotes."""
    values: dict[str, str] = {}
    for number, line in read_lines(path, "--config", ConfigError):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        name, sep, value = line.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--config {path} line {number}: expected NAME=value, got {line!r}")
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
            raise ConfigError(f"{where}: {e}") from None
    port_given = flags.get("port") is not None or "PORT" in environ or "PORT" in file_values
    if values["cache_default_ttl"] > values["cache_max_ttl"]:
        raise ConfigError(
            f"--cache-default-ttl {values['cache_default_ttl']} is longer than --cache-max-ttl "
            f"{values['cache_max_ttl']}: lower the default or raise the maximum"
        )
    if values["embedding_url"] and not values["embedding_model"]:
        raise ConfigError("--embedding-url needs --embedding-model (EMBEDDING_MODEL): the model the service runs")
    passwords = []
    for name, _url in values["sql_source"]:
        variable = sql_password_variable(name)
        password = environ.get(variable, file_values.get(variable))
        if password is not None:
            passwords.append((name, password))
    return Settings(**values, sql_passwords=tuple(passwords), stdio=stdio, port_given=port_given)


def sql_password_variable(source: str) -> str:
    """The environment variable holding the password of ``--sql-source NAME=...``."""
    return "SQL_PASSWORD_" + source.upper().replace("-", "_")


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
