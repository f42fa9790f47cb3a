"""``python -m benchmarks``: the same as ``omnibus bench``."""

from benchmarks.cli import entry

raise SystemExit(entry())
