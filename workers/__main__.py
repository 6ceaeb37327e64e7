"""`python -m workers`: the same as `payhooks worker`."""

import sys

from shared.cli import main

sys.exit(main(["worker", *sys.argv[1:]]))
