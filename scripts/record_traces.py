#!/usr/bin/env python
"""Record routing traces of a Hugging Face transformers MoE model in slimjax's canonical .npz.

A thin entry point to :func:`slimjax.traces._record.main`; the recorder itself is
:func:`slimjax.traces.record`. Needs the ``traces`` extra (torch, transformers)::

    pip install -e '.[traces]'
    python scripts/record_traces.py --model allenai/OLMoE-1B-7B-0924 --text prompts.txt --out olmoe.npz
    python scripts/record_traces.py --tiny mixtral --prompt "hello world" --out tiny.npz   # no download
"""

import sys

from slimjax.traces._record import main

if __name__ == "__main__":
    sys.exit(main())
