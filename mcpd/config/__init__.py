# -*- test-case-name: tests.test_settings -*-
"""mcpd's configuration: every knob, by section, and the `Settings` they resolve to.

=========  ===========================================================================
server     listeners, the engine's limits and timers, shutdown (`mcpd.config.server`)
packs      which tool packs are served (`mcpd.config.packs`)
security   keys, addresses, rate limits, budgets, deadlines (`mcpd.config.security`)
observe    logs, audit, traces, monitoring routes (`mcpd.config.observe`)
stores     where the stores keep their data (`mcpd.config.stores`)
=========  ===========================================================================

Every knob is a flag, an environment variable and an entry of the ``--config`` file; a value
mcpd cannot use raises `ConfigError`, one line that start-up prints before it stops.
"""

from mcpd.config.knob import ConfigError, Knob, read_lines
from mcpd.config.settings import KNOBS, KNOBS_BY_NAME, SECTIONS, Settings, read_env_file, resolve

__all__ = [
    "KNOBS",
    "KNOBS_BY_NAME",
    "SECTIONS",
    "ConfigError",
    "Knob",
    "Settings",
    "read_env_file",
    "read_lines",
    "resolve",
]
