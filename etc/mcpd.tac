# mcpd as a twistd application file:  twistd -ny etc/mcpd.tac
#
# Settings come from the environment and from the .env-style file named by $MCPD_CONFIG
# (default /etc/mcpd/mcpd.env, skipped if absent), the same names `mcpd --help` lists.
import os

from twisted.application.service import Application

from mcpd.settings import read_env_file, resolve
from mcpd.tap import build_service, load_packs

config = os.environ.get("MCPD_CONFIG", "/etc/mcpd/mcpd.env")
file_values = read_env_file(config) if os.path.exists(config) else {}
settings = resolve({}, os.environ, file_values)

application = Application("mcpd")
build_service(settings, load_packs(settings)).setServiceParent(application)
