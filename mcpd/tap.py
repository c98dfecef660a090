# -*- test-case-name: tests.test_tap -*-
"""twistd wiring: the command-line `Options` become `Settings`; `makeService` hands them to
`mcpd.daemon.build_service` (cf. twisted/web/tap.py)."""

from __future__ import annotations

import getopt
import os
import sys
from typing import Any

from twisted.application.service import MultiService
from twisted.python import usage

from mcpd._version import __version__
from mcpd.config import KNOBS, ConfigError, Settings, read_env_file, resolve
from mcpd.daemon import build_service, check_settings, load_packs, read_secrets
from mcpd.observe import logging as mcpd_logging
from mcpd.tools.pack import ToolPack


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(value) or "none"
    return "none" if value is None else str(value)


class Options(usage.Options):
    """``twistd mcpd`` flags; every one also reads from the environment and ``--config``."""

    synopsis = "[options]"
    longdesc = (
        "Serve the Model Context Protocol over Streamable HTTP (default 127.0.0.1:8765) or stdio. "
        "Each option can also be set by the environment variable named in brackets, or in a "
        "--config file of NAME=value lines; a flag wins over the environment, which wins over the file."
    )
    optFlags = [["stdio", None, "Serve one client on stdin/stdout instead of HTTP (logs go to stderr)."]] + [
        [knob.flag, None, f"{knob.help} [{knob.env}]"] for knob in KNOBS if knob.switch
    ]
    optParameters = [["config", "c", None, "A .env-style file of NAME=value settings."]] + [
        [knob.flag, None, None, f"{knob.help} [{knob.env}] (default: {_show(knob.default)})"]
        for knob in KNOBS
        if not knob.repeatable and not knob.switch
    ]

    def __init__(self) -> None:
        super().__init__()
        for knob in KNOBS:
            if knob.repeatable:
                self[knob.name] = []
        self.settings: Settings | None = None
        self.packs: list[ToolPack] = []

    def opt_listen(self, endpoint: str) -> None:
        """A Twisted endpoint string to serve HTTP on (repeatable), e.g. tcp:8765:interface=0.0.0.0 [LISTEN]."""
        self["listen"].append(endpoint)

    def opt_tool_pack(self, reference: str) -> None:
        """A tool pack by dotted module name, module[:attribute] (repeatable) [TOOL_PACKS]."""
        self["tool_pack"].append(reference)

    def opt_api_key(self, key: str) -> None:
        """An API key clients must send (repeatable; shows in ps: prefer --api-key-file) [API_KEYS]."""
        self["api_key"].append(key)

    def opt_allowed_ip(self, entry: str) -> None:
        """A client address or CIDR range allowed to connect (repeatable) [ALLOWED_IPS]."""
        self["allowed_ip"].append(entry)

    def opt_trusted_proxy(self, entry: str) -> None:
        """A reverse proxy address or CIDR whose X-Forwarded-For is believed (repeatable) [TRUSTED_PROXIES]."""
        self["trusted_proxy"].append(entry)

    def opt_cors_origin(self, origin: str) -> None:
        """A browser origin allowed to call mcpd, or * (repeatable) [CORS_ORIGINS]."""
        self["cors_origin"].append(origin)

    def opt_sql_source(self, source: str) -> None:
        """A database the sql pack may read, NAME=URL (repeatable; read-only) [SQL_SOURCES]."""
        self["sql_source"].append(source)

    def opt_sql_password_file(self, entry: str) -> None:
        """NAME=PATH: the file holding --sql-source NAME's password (repeatable) [SQL_PASSWORD_FILES]."""
        self["sql_password_file"].append(entry)

    def opt_version(self) -> None:
        """Print mcpd's version and exit."""
        print(f"mcpd {__version__}")
        sys.exit(0)

    def postOptions(self) -> None:
        flags = {knob.name: self.get(knob.flag, self.get(knob.name)) for knob in KNOBS}
        for knob in KNOBS:
            if knob.switch:  # an absent flag (0) must not hide the environment
                flags[knob.name] = True if flags[knob.name] else None
        try:
            file_values = read_env_file(self["config"]) if self["config"] else {}
            settings = resolve(flags, os.environ, file_values, stdio=bool(self["stdio"]))
            self.settings = settings = read_secrets(settings)
            self.packs = load_packs(settings)
            # --stdio checks no listener: the reactor is not imported for it (`mcpd` then
            # installs one without TLS: mcpd.cli.install_stdio_reactor).
            check_settings(settings, None if settings.stdio else _reactor())
        except ConfigError as e:
            # One line naming the option and what is wrong, before anything starts.
            raise usage.UsageError(str(e)) from None
        mcpd_logging.configure(settings.log_format, settings.logfile, settings.stdio)
        parent = self.parent
        if parent is not None and logs_itself(settings, bool(parent["nodaemon"]), parent["logfile"]):
            parent["logger"] = "mcpd.observe.logging.observer"


def logs_itself(settings: Settings, nodaemon: bool, twistd_logfile: str | None) -> bool:
    """Whether mcpd's log observer (`mcpd.observe.logging.observer`) should log under twistd,
    rather than twistd's own (to ``--logfile``, twistd.log by default, when daemonised).

    Yes in stdio mode (twistd -n logs to stdout, which belongs to the protocol), with LOG_FILE,
    and for JSON lines; a daemon's JSON lines go to twistd's ``--logfile`` (which twistd then
    does not rotate): its stdout is /dev/null once it has daemonised."""
    if settings.stdio or settings.logfile:
        return True
    if settings.log_format == "text":
        return False
    if not nodaemon:
        mcpd_logging.configured.logfile = twistd_logfile if twistd_logfile not in (None, "", "-") else "twistd.log"
    return True


def twistd_flags(argv: list[str]) -> tuple[bool, str | None]:
    """``--nodaemon`` and ``--logfile`` as twistd read them from its command line ``argv``
    (for a .tac file, which twistd does not tell its options)."""
    from twisted.scripts.twistd import ServerOptions

    spec = ServerOptions()
    try:
        given, _rest = getopt.getopt(argv, spec.shortOpt, spec.longOpt)
    except getopt.GetoptError:
        return False, None
    nodaemon, logfile = False, None
    for flag, value in given:
        if flag in ("-n", "--nodaemon"):
            nodaemon = True
        elif flag in ("-l", "--logfile"):
            logfile = value
    return nodaemon, logfile


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def makeService(options: Options) -> MultiService:
    """twistd's entry point."""
    from twisted.internet import reactor

    assert options.settings is not None
    return build_service(options.settings, reactor, options.packs)
