# mcpd as a twistd application file:  twistd -ny etc/mcpd.tac
#
# Settings come from the environment and from the .env-style file named by $MCPD_CONFIG
# (default /etc/mcpd/mcpd.env, skipped if absent): the same names `mcpd --help` lists, read and
# checked exactly as for `twistd mcpd` (a bad value stops start-up with one line).
import os
import sys

from twisted.application.service import Application
from twisted.logger import ILogObserver
from twisted.python import usage

from mcpd.observe import logging as mcpd_logging
from mcpd.tap import Options, makeService

config = os.environ.get("MCPD_CONFIG", "/etc/mcpd/mcpd.env")
options = Options()
try:
    options.parseOptions(["--config", config] if os.path.exists(config) else [])
except usage.UsageError as e:
    sys.exit(f"mcpd: {e}")

application = Application("mcpd")
# LOG_FORMAT / LOG_FILE, as under `twistd mcpd`: twistd takes the application's observer.
application.setComponent(ILogObserver, mcpd_logging.observer())
makeService(options).setServiceParent(application)
