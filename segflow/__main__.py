"""``python -m segflow``: the same command line as ``segflow``."""

import sys

from segflow.flows.cli import main

sys.exit(main())
