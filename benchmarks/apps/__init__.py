"""Small HTTP servers the benchmark runs as child processes: the ceiling and the subscriber app."""
