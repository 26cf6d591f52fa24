"""The package version (one place; ``slimjax.__version__`` re-exports it)."""

__version__ = "1.0.0"
