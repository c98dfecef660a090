"""``python -m mcpd``: the same as the ``mcpd`` command."""

import sys

from mcpd.cli import main

sys.exit(main())
