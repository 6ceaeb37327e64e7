"""`python -m shared.simulators --port P`: serve the provider simulators in the foreground."""

from __future__ import annotations

import sys

from shared.simulators import main

sys.exit(main())
