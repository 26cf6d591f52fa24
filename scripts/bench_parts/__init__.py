"""Parts of scripts/bench.py, one module each: ``measure(quick: bool) -> dict``."""
