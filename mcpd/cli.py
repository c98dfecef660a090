# -*- test-case-name: tests.test_tap -*-
"""The ``mcpd`` command: the twistd service without twistd's flags (``mcpd --port 8765``), and
``mcpd migrate [--check]`` for the SQL store's schema."""

from __future__ import annotations

import os
import sys

from twisted.logger import globalLogBeginner
from twisted.python import usage

from mcpd.config import KNOBS_BY_NAME, ConfigError, read_env_file, resolve
from mcpd.daemon import build_service, sql_config
from mcpd.observe.logging import observer
from mcpd.tap import Options


def main(argv: list[str] | None = None) -> int:
    """Parse the options, run the daemon in the foreground until stopped, return the exit code."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["migrate"]:
        return migrate_main(args[1:])
    options = Options()
    try:
        options.parseOptions(args)
    except usage.UsageError as e:
        print(f"mcpd: {e}", file=sys.stderr)
        print("mcpd: run 'mcpd --help' for the options", file=sys.stderr)
        return 2
    assert options.settings is not None
    from twisted.internet import reactor

    # Logs go to stderr (or --logfile), never stdout: it belongs to MCP in --stdio mode.
    globalLogBeginner.beginLoggingTo([observer(sys.__stderr__)], redirectStandardIO=False)
    service = build_service(options.settings, reactor, options.packs)
    try:
        # As twistd does: the whole tree starts before the reactor runs, so a service that
        # cannot start stops mcpd here (inside the reactor, the failure would only be logged).
        service.privilegedStartService()
        service.startService()
    except SystemExit as e:
        print(e, file=sys.stderr)
        return 1
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    # A listener that failed after start-up (one binding later), or a store opened in the
    # background that could not be (mcpd.stores.opening), stopped the reactor.
    failed = [child for child in service if getattr(child, "failure", None) is not None]
    return 1 if failed else 0


# The knobs `mcpd migrate` reads: where the database is and how to reach it.
_MIGRATE_KNOBS = ("data_dir", "db_url", "db_password", "db_password_file", "db_timeout")


class MigrateOptions(usage.Options):
    """``mcpd migrate`` flags: the database settings of the daemon, from the same places."""

    synopsis = "migrate [--check] [--config FILE] [--db-url URL] ..."
    longdesc = (
        "Bring the SQL store's schema up to date (what mcpd also does at start-up, under the same lock), "
        "or with --check only say whether it is: exit 0 up to date, 1 migrations pending, 2 the database "
        "is newer than this mcpd or cannot be reached."
    )
    optFlags = [["check", None, "Change nothing; exit 1 if migrations are pending."]]
    optParameters = [["config", "c", None, "A .env-style file of NAME=value settings."]] + [
        [KNOBS_BY_NAME[name].flag, None, None, f"{KNOBS_BY_NAME[name].help} [{KNOBS_BY_NAME[name].env}]"]
        for name in _MIGRATE_KNOBS
    ]

    def postOptions(self) -> None:
        flags = {name: self.get(KNOBS_BY_NAME[name].flag) for name in _MIGRATE_KNOBS}
        try:
            file_values = read_env_file(self["config"]) if self["config"] else {}
            self.settings = resolve(flags, os.environ, file_values)
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


def migrate_main(argv: list[str]) -> int:
    """``mcpd migrate [--check]``: one line saying where the schema stands; the exit code."""
    from sqlalchemy.exc import DBAPIError

    from mcpd.stores.sql import migrate
    from mcpd.stores.sql.config import DatabaseConfigError
    from mcpd.stores.sql.database import build_engine

    options = MigrateOptions()
    try:
        options.parseOptions(argv)
        config = sql_config(options.settings)
    except (usage.UsageError, DatabaseConfigError) as e:
        print(f"mcpd migrate: {e}", file=sys.stderr)
        return 2
    shown = config.shown_url
    engine = build_engine(config)
    try:
        if options["check"]:
            with engine.connect() as connection:
                state = migrate.schema_state(connection, shown)
            if state.up_to_date:
                print(f"database {shown}: schema at {state.head}, up to date")
                return 0
            print(
                f"database {shown}: schema at {state.current or 'none'}, needs {', '.join(state.pending)}: "
                "run mcpd migrate (or start mcpd, which applies them)"
            )
            return 1
        before, after = migrate.upgrade(engine, shown)
    except migrate.MigrationError as e:
        print(f"mcpd migrate: {e}", file=sys.stderr)
        return 2
    except DBAPIError as e:
        print(f"mcpd migrate: cannot use {shown}: {str(e.orig).splitlines()[0]}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    if before.pending:
        print(
            f"database {shown}: upgraded from {before.current or 'none'} through {', '.join(before.pending)}; now at {after.current}"
        )
    else:
        print(f"database {shown}: already at {after.current}, nothing to do")
    return 0


if __name__ == "__main__":
    sys.exit(main())
