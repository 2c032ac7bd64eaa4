"""``python -m scripts.bench``: see :mod:`scripts.bench.cli`."""

import sys

from scripts.bench.cli import main

sys.exit(main())
