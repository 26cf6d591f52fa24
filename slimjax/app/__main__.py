"""``python -m slimjax.app ...`` is the ``slimjax`` command."""

from slimjax.app._cli import main

if __name__ == "__main__":
    main()
