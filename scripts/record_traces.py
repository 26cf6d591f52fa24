#!/usr/bin/env python
"""Record routing traces of a Hugging Face transformers MoE model in slimjax's canonical .npz.

A thin entry point to :func:`slimjax.traces._record.main`; the recorder itself is
:func:`slimjax.traces.record`. Needs the ``traces`` extra (torch, transformers)::

    pip install -e '.[traces]'
    python scripts/record_traces.py --model allenai/OLMoE-1B-7B-0924 --text prompts.txt --out olmoe.npz
    python scripts/record_traces.py --tiny mixtral --prompt "hello world" --out tiny.npz   # no download
"""

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parent))
import _bootstrap  # noqa: E402  (a fresh clone: set up .venv and re-run there)

_bootstrap.ensure('traces')

import sys

from slimjax.traces._record import main

if __name__ == "__main__":
    sys.exit(main())
