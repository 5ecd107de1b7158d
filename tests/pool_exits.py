"""An agent module that exits as it is imported (an argparse at module level, say)."""

from __future__ import annotations

import sys

sys.exit(3)
