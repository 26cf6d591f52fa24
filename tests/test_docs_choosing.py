"""The handbook page *Choosing a method* (docs/choosing.md) names everything a user can choose.

Every registered solver name and every solver class behind them, every bound method name and
object of :mod:`slimjax.bounds`, and every dynamic policy name and object of
:mod:`slimjax.dynamic` must appear on the page inside a code span (`` `levels` ``,
`` `Levels(max_levels=...)` ``), so that a method added to the code without a word on the page
fails here. Fast: reads the page and imports the packages, builds no site.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import slimjax
from slimjax import bounds, dynamic, solvers

PAGE = Path(__file__).resolve().parents[1] / "docs" / "choosing.md"


@pytest.fixture(scope="module")
def spans() -> list[str]:
    text = PAGE.read_text(encoding="utf-8")
    out = re.findall(r"`([^`\n]+)`", text)
    assert len(out) > 50, "docs/choosing.md: expected a page with code spans"
    return out


def _named(spans: list[str], name: str) -> bool:
    """``name`` is a code span of its own (a method or policy name as the user types it)."""
    return name in spans


def _mentioned(spans: list[str], word: str) -> bool:
    """``word`` occurs as a whole identifier inside some code span (``Levels()``, ``MILP(time_limit=...)``)."""
    pat = re.compile(rf"(?<![\w.]){re.escape(word)}(?!\w)")
    return any(pat.search(s) for s in spans)


def _classes(module, base: type) -> list[str]:
    """The public, concrete subclasses of ``base`` that ``module`` exports (``__all__``)."""
    return sorted(n for n in module.__all__
                  if isinstance(getattr(module, n), type) and issubclass(getattr(module, n), base)
                  and getattr(module, n) is not base)


def test_every_solver_name_is_on_the_page(spans):
    names = sorted(slimjax.methods())
    assert "successive-fast" in names and "milp" in names  # the registry is the one the page describes
    missing = [n for n in names if not _named(spans, n)]
    assert not missing, f"docs/choosing.md does not name the registered solvers {missing}"


def test_every_solver_object_is_on_the_page(spans):
    classes = _classes(solvers, solvers.Solver)
    # every registered name's object (a chain's stages included) is of an exported class
    for obj in slimjax.methods().values():
        stages = getattr(obj, "stages_", (obj,))
        assert all(type(s).__name__ in classes for s in stages), (obj, classes)
    missing = [c for c in classes if not _mentioned(spans, c)]
    assert not missing, f"docs/choosing.md does not mention the solver objects {missing}"


def test_successive_fast_is_described_as_what_it_is():
    """The page's row for `successive-fast` must name the backend the registry really uses."""
    obj = slimjax.methods()["successive-fast"]
    text = PAGE.read_text(encoding="utf-8")
    row = next(line for line in text.splitlines() if line.startswith("| `successive-fast`"))
    assert f'maxconv="{obj.maxconv}"' in row, row
    other = {"dense", "hull", "fptas"} - {obj.maxconv}
    assert not any(f'maxconv="{b}"' in row for b in other), row


def test_every_bound_method_is_on_the_page(spans):
    assert bounds.METHODS, "slimjax.bounds.METHODS is empty"
    missing = [m for m in bounds.METHODS if not _named(spans, m)]
    assert not missing, f"docs/choosing.md does not name the bound methods {missing}"
    base = getattr(bounds, "BoundMethod", None)
    if base is not None:  # bound methods as objects
        classes = _classes(bounds, base)
        assert classes
        missing = [c for c in classes if not _mentioned(spans, c)]
        assert not missing, f"docs/choosing.md does not mention the bound objects {missing}"


def test_every_dynamic_policy_is_on_the_page(spans):
    assert dynamic.POLICIES, "slimjax.dynamic.POLICIES is empty"
    missing = [p for p in dynamic.POLICIES if not _named(spans, p)]
    assert not missing, f"docs/choosing.md does not name the dynamic policies {missing}"
    base = getattr(dynamic, "Policy", None)
    if base is not None:  # policies as objects
        classes = _classes(dynamic, base)
        assert classes
        missing = [c for c in classes if not _mentioned(spans, c)]
        assert not missing, f"docs/choosing.md does not mention the policy objects {missing}"


def test_the_page_cites_the_run_that_measured_it():
    """The figures come from experiments/choosing (command, machine, date), not from older studies."""
    text = PAGE.read_text(encoding="utf-8")
    assert "experiments/choosing/run.py" in text
    assert (PAGE.parents[1] / "experiments" / "choosing" / "results.csv").is_file()
