"""The handbook: it builds strictly, covers the public API, its code runs, and it stays self-contained.

- every ```python block of README.md and docs/ runs, page by page in one namespace (like a
  notebook), in a temporary working directory; blocks that only include a file with the snippet
  syntax (``--8<--``) show an example, which runs in ``test_examples``; a block whose first line
  is ``# needs: torch, transformers`` (an optional extra) is left out where those are missing;
- every script in examples/ runs (small arguments; the GPU one on the CPU);
- ``bash scripts/docs.sh`` builds the site with no warning, and the API reference shows every
  public name of the documented modules and every solver option with its documentation;
- nothing in the package, its config, the README or the docs refers to files outside the
  repository or to issue numbers.
"""

from __future__ import annotations

import dataclasses
import html
import importlib
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md"] + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md"))
EXAMPLES = sorted(p.name for p in (ROOT / "examples").glob("*.py"))
API_MODULES = ["slimjax", "slimjax.solvers", "slimjax.ops", "slimjax.generate", "slimjax.traces", "slimjax.queueing",
               "slimjax.plots", "slimjax.bounds", "slimjax.dynamic"]

_FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.S | re.M)


def python_blocks(page: str) -> list[tuple[int, str]]:
    """The ```python blocks of a Markdown file as (line number, code), snippet includes left out."""
    text = (ROOT / page).read_text()
    out = []
    for m in _FENCE.finditer(text):
        code = m.group(1)
        lines = [ln for ln in code.splitlines() if ln.strip()]
        if lines and all(ln.strip().startswith("--8<--") for ln in lines):
            continue
        out.append((text.count("\n", 0, m.start()) + 2, code))
    return out


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(JAX_PLATFORMS="cpu", WANDB_MODE="offline", WANDB_SILENT="true", MPLBACKEND="Agg",
               NO_MKDOCS_2_WARNING="1", PYTHON=sys.executable)
    return env


# -- code blocks --------------------------------------------------------------------------------


def test_readme_starts_with_the_two_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    i = lines.index("```bash")
    assert [ln.split("#")[0].strip() for ln in lines[i + 1 : i + 3]] == ["bash scripts/run.sh", "bash scripts/test.sh"]
    assert lines[i + 3] == "```"


def test_collector_finds_blocks():
    """The collector is not vacuous: it sees the README's example and skips snippet includes."""
    readme = python_blocks("README.md")
    assert readme and "solve_batch" in readme[0][1]
    assert all("--8<--" not in code for _, code in python_blocks("docs/workflows.md"))
    assert "--8<--" in (ROOT / "docs/workflows.md").read_text()


# -- examples ------------------------------------------------------------------------------------


# (the examples run in tests/test_docs_examples.py, the pages' code blocks in tests/test_docs_pages.py)


# -- the site ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    for mod in ("mkdocs", "mkdocstrings", "material", "mkdocstrings_handlers.python"):
        pytest.importorskip(mod, reason="the docs extra is not installed (pip install -e '.[docs]')")
    out = tmp_path_factory.mktemp("site")
    res = subprocess.run(["bash", str(ROOT / "scripts" / "docs.sh"), "--site-dir", str(out)], cwd=ROOT, env=_env(),
                         capture_output=True, text=True, timeout=600)
    log = res.stdout + res.stderr
    assert res.returncode == 0, f"scripts/docs.sh failed:\n{log[-5000:]}"
    assert "WARNING" not in log, log[-5000:]
    return out


def _api_html(site: Path) -> str:
    return "".join(p.read_text() for p in (site / "api").rglob("*.html"))


def test_site_builds_every_page(site):
    for page in PAGES[1:]:
        rel = Path(page).relative_to("docs").with_suffix("")
        built = site / ("index.html" if rel.name == "index" else rel / "index.html")
        assert built.is_file(), f"{page} was not built"


def test_nav_lists_every_page():
    import yaml

    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]

    def flat(items):
        for it in items:
            v = next(iter(it.values())) if isinstance(it, dict) else it
            yield from (flat(v) if isinstance(v, list) else [v])

    listed = set(flat(nav))
    pages = {str(Path(p).relative_to("docs")) for p in PAGES[1:]}
    assert pages - listed == set(), f"pages missing from mkdocs.yml's nav: {sorted(pages - listed)}"


@pytest.mark.parametrize("module", API_MODULES)
def test_api_reference_covers_every_public_name(site, module):
    api = _api_html(site)
    mod = importlib.import_module(module)
    missing = []
    for name in mod.__all__:
        obj = getattr(mod, name)
        if isinstance(obj, type(sys)):  # a submodule: its own page
            if f'id="{obj.__name__}' not in api:
                missing.append(name)
            continue
        # where it may be documented: here; from its own submodule when a function has the name of
        # its module (slimjax.generate.instances); or in another documented module that exports
        # the same object (slimjax.utilization is slimjax.queueing.utilization)
        ids = [f"{module}.{name}", f"{module}.{name}.{name}"]
        ids += [f"{m}.{name}" for m in API_MODULES if getattr(importlib.import_module(m), name, None) is obj]
        if not any(f'id="{i}"' in api for i in ids):
            missing.append(name)
    assert not missing, f"not in the API reference: {', '.join(f'{module}.{n}' for n in missing)}"


def test_every_solver_option_is_documented(site):
    import slimjax.solvers as S

    page = html.unescape(re.sub(r"<[^>]+>", "", (site / "api" / "solvers" / "index.html").read_text()))
    for name in S.__all__:
        cls = getattr(S, name)
        if not (isinstance(cls, type) and issubclass(cls, S.Solver)) or cls in (S.Solver, S.Chain):
            continue
        for f in dataclasses.fields(cls):
            doc = f.metadata.get("doc")
            assert doc, f"{name}.{f.name} has no metadata['doc']"
            assert re.sub(r"\s+", " ", doc) in re.sub(r"\s+", " ", page), f"{name}.{f.name}: its option row is missing"
    assert "successive-best" in page and "chain(Successive(order='best-of'" in page  # the names table


def test_docstring_roles_become_links(site):
    api = _api_html(site)
    assert ":func:`" not in api and ":class:`" not in api
    assert 'href="../slimjax/#slimjax.methods"' in (site / "api" / "solvers" / "index.html").read_text()


# -- self-contained ----------------------------------------------------------------------------

OUTSIDE = [
    (re.compile(r"\.\./shared|shared/traces"), "a path outside the repository"),
    (re.compile(r"\bDESIGN\b"), "the design notes (not part of the repository)"),
    (re.compile(r"(?<!\d{4}, )§\s*\d"), "a section of the design notes"),  # not a citation ("Pisinger 2004, §11.10")
    (re.compile(r"\bissues? ?#?\d+|\(#\d+\)|\bPR ?#?\d+", re.I), "an issue number"),
]


def _checked_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "mkdocs.yml"]
    files += sorted((ROOT / "slimjax").rglob("*.py")) + sorted((ROOT / "slimjax").rglob("*.yaml"))
    files += sorted((ROOT / "docs").rglob("*.md")) + sorted((ROOT / "examples").glob("*.py"))
    return files


def test_no_references_outside_the_repository():
    found = []
    for path in _checked_files():
        for i, line in enumerate(path.read_text().splitlines(), 1):
            for pat, what in OUTSIDE:
                if pat.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{i}: {what}: {line.strip()[:100]}")
    assert not found, "references a user does not have:\n" + "\n".join(found)


def test_the_reference_check_can_fail(tmp_path):
    bad = ["see DESIGN §4.4", "from ../shared/traces/raw", "as in issue 12", "fixed in (#7)"]
    for text in bad:
        assert any(p.search(text) for p, _ in OUTSIDE), text
    fine = ["the successive decomposition, K = 2, 4 § none", "(Kellerer, Pferschy and Pisinger 2004, §11.10)",
            "issues the first call", "see the DESIGNER's notes"]
    for text in fine:
        assert not any(p.search(text) for p, _ in OUTSIDE), text
