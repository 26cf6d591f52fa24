"""Make a ``python scripts/X.py`` command work as the first command of a fresh clone.

``ensure(extras)`` returns at once when slimjax and JAX are importable (the repository's .venv or
any environment with slimjax installed). Otherwise it runs ``scripts/_setup.sh EXTRAS`` (creates
.venv and installs slimjax at the pinned versions) and re-executes the script with .venv's Python.
``SLIMJAX_NO_BOOTSTRAP=1`` turns it off.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def ensure(extras: str = "") -> None:
    """Re-run this script in the repository's .venv (set up first) unless slimjax is importable."""
    if os.environ.get("SLIMJAX_NO_BOOTSTRAP") == "1":
        return
    if all(importlib.util.find_spec(m) is not None for m in ("jax", "jaxtyping", "slimjax")):
        return
    venv_py = ROOT / ".venv" / "bin" / "python"
    if Path(sys.executable).resolve() == venv_py.resolve() and os.environ.get("SLIMJAX_BOOTSTRAPPED") == "1":
        raise SystemExit("scripts/_bootstrap.py: .venv was set up but slimjax is still not importable")
    print(f"[{Path(sys.argv[0]).name}] setting up .venv (bash scripts/_setup.sh {extras})", file=sys.stderr, flush=True)
    subprocess.run(["bash", str(ROOT / "scripts" / "_setup.sh"), extras], check=True)
    os.environ["SLIMJAX_BOOTSTRAPPED"] = "1"
    os.execv(str(venv_py), [str(venv_py), *sys.argv])
