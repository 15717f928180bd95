"""``python -m phreg_bench`` is the ``phreg-bench`` command."""

import sys

from phreg_bench.cli import main

sys.exit(main())
