"""``python -m mcpd``: the same as the ``mcpd`` command."""

import gc
import sys

# Until mcpd serves (mcpd.cli.main): start-up makes no garbage worth collecting.
gc.disable()

from mcpd.cli import main  # noqa: E402

sys.exit(main())
