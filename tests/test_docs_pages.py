"""The handbook's code blocks run: every ```python block of README.md and docs/, page by page in
one namespace (like a notebook), in a temporary working directory (see tests/test_docs.py for the
rules). The pages whose features have their own fast tests (dynamic, load) run under ``--slow``;
split from test_docs.py so that the pages spread over the test workers."""

from __future__ import annotations

import importlib.util
import re
import sys
import types

import pytest

from tests.test_docs import PAGES, python_blocks

#: pages whose blocks take minutes and repeat what their feature's own tests check
SLOW_PAGES = {"docs/dynamic.md", "docs/load.md"}


@pytest.fixture
def solver_names():
    """The solver names as they were before the page ran (docs/extending.md registers its own
    solver; a later test on the same worker must not see it)."""
    from slimjax.solvers import _methods

    saved = dict(_methods.methods())
    yield
    _methods._NAMED.clear()
    _methods._NAMED.update(saved)


@pytest.mark.parametrize("page", [pytest.param(p, marks=pytest.mark.slow) if p in SLOW_PAGES else p
                                  for p in PAGES if python_blocks(p)])
def test_code_blocks_run(page, tmp_path, monkeypatch, solver_names):
    monkeypatch.chdir(tmp_path)
    module = types.ModuleType("handbook_" + re.sub(r"\W", "_", page))  # a real module: dataclasses need one
    monkeypatch.setitem(sys.modules, module.__name__, module)
    ns = module.__dict__
    for line, code in python_blocks(page):
        needs = re.match(r"# needs: (.+)\n", code)  # a block that needs an optional extra says so
        if needs and not all(importlib.util.find_spec(m.strip()) for m in needs.group(1).split(",")):
            continue
        try:
            exec(compile(code, f"{page}:{line}", "exec"), ns)
        except Exception as e:  # report which block failed
            raise AssertionError(f"{page}: the Python block at line {line} failed: {type(e).__name__}: {e}") from e


