"""``python -m modeltap``: the command line."""

import sys

from modeltap.cli import main

sys.exit(main())
