"""``python -m slime_entropy.analysis`` (same as ``python -m slime_entropy.analysis``)."""

import sys

from slime_entropy.analysis.cli import main

if __name__ == "__main__":
    sys.exit(main())
