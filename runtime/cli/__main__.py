"""``python -m runtime.cli``: the same as the ``omnibus`` console script."""

import sys

from runtime.cli import main

sys.exit(main())
