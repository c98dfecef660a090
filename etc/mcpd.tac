# mcpd as a twistd application file:  twistd -ny etc/mcpd.tac
#
# Settings come from the environment and from the .env-style file named by $MCPD_CONFIG
# (default /etc/mcpd/mcpd.env, skipped if absent; a $MCPD_CONFIG that names no file stops
# start-up): the same names `mcpd --help` lists, read and checked exactly as for `twistd mcpd`
# (a bad value stops start-up with one line). The log: as under `twistd mcpd`, twistd's own
# (stdout with -n, else --logfile, twistd.log by default) unless LOG_FILE, LOG_FORMAT=json (a
# daemon's JSON lines go to twistd's --logfile) or --stdio ask for mcpd's.
import os
import sys

from twisted.application.service import Application
from twisted.logger import ILogObserver
from twisted.python import usage

from mcpd.observe import logging as mcpd_logging
from mcpd.tap import Options, logs_itself, makeService, twistd_flags

config = os.environ.get("MCPD_CONFIG")
if config is not None and not os.path.exists(config):
    sys.exit(f"mcpd: MCPD_CONFIG names {config}, which does not exist")
config = config or "/etc/mcpd/mcpd.env"
options = Options()
try:
    options.parseOptions(["--config", config] if os.path.exists(config) else [])
except usage.UsageError as e:
    sys.exit(f"mcpd: {e}")

application = Application("mcpd")
nodaemon, logfile = twistd_flags(sys.argv[1:])
if logs_itself(options.settings, nodaemon, logfile):
    application.setComponent(ILogObserver, mcpd_logging.observer())
makeService(options).setServiceParent(application)
