"""``python -m slime_entropy.analyze``: the entropy analysis command (implemented in :mod:`slime_entropy.analysis`)."""

import sys

from slime_entropy.analysis.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
