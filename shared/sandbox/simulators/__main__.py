"""`python -m shared.sandbox.simulators --port P`: the provider simulators, in the foreground."""

from __future__ import annotations

import sys

from shared.sandbox.simulators import main

sys.exit(main())
