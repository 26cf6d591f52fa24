"""MkDocs hooks of the slimjax handbook (``mkdocs.yml``: ``hooks``).

Markers in a page's Markdown are replaced by tables generated from the code, so the docs cannot
drift from it:

* ``<!-- solver-options: NAME -->``: the options of the solver class ``slimjax.solvers.NAME``
  (name, default and the field's ``metadata["doc"]``);
* ``<!-- solver-names -->``: every named solver of :func:`slimjax.methods` with its object.

An unknown name, or a solver option without documentation, fails the (strict) build.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

# the hooks import slimjax: the repository's own tree, whatever else is installed
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

_OPTIONS = re.compile(r"<!--\s*solver-options:\s*([A-Za-z_][A-Za-z0-9_]*)\s*-->")
_NAMES = re.compile(r"<!--\s*solver-names\s*-->")


def _cell(text: str) -> str:
    """Plain text in a Markdown table cell: no emphasis (``N*L*E``), no HTML, no column breaks."""
    text = str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")
    for ch in "*_[]":
        text = text.replace(ch, "\\" + ch)
    return text.replace("<", "&lt;").replace(">", "&gt;")


def _code(text: str) -> str:
    """Text in a code span of a table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def options_table(cls) -> str:
    """A Markdown table of a solver class's options (from the fields' ``metadata["doc"]``)."""
    rows = ["| option | default | meaning |", "|---|---|---|"]
    for f in dataclasses.fields(cls):
        doc = f.metadata.get("doc")
        if not doc:
            raise ValueError(f"slimjax.solvers.{cls.__name__}.{f.name}: the option has no metadata['doc']")
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = repr(f.default_factory())  # type: ignore[misc]
        else:
            default = "(required)"
        rows.append(f"| `{f.name}` | `{_code(default)}` | {_cell(doc)} |")
    if len(rows) == 2:
        return f"`{cls.__name__}` has no options."
    return "\n".join(rows)


def names_table() -> str:
    """A Markdown table of every named solver (``slimjax.methods()``)."""
    import slimjax

    rows = ["| name | object |", "|---|---|"]
    for name, obj in slimjax.methods().items():
        rows.append(f"| `{name}` | `{_code(repr(obj))}` |")
    return "\n".join(rows)


def _solver_class(name: str):
    import slimjax.solvers as S

    cls = getattr(S, name, None)
    if not (isinstance(cls, type) and issubclass(cls, S.Solver)):
        raise ValueError(f"<!-- solver-options: {name} -->: slimjax.solvers.{name} is not a solver class")
    return cls


def on_page_markdown(markdown: str, page, config, files) -> str:
    markdown = _OPTIONS.sub(lambda m: options_table(_solver_class(m.group(1))), markdown)
    if _NAMES.search(markdown):
        markdown = _NAMES.sub(lambda m: names_table(), markdown)
    return markdown
