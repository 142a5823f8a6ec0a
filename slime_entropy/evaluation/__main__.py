"""``python -m slime_entropy.evaluation``: see :mod:`slime_entropy.evaluation.cli`."""

import sys

from slime_entropy.evaluation.cli import main

if __name__ == "__main__":
    sys.exit(main())
