"""Griffe extension of the slimjax handbook: Sphinx roles in docstrings become cross-references.

The docstrings are Google style with Sphinx roles (``:func:`solve_batch```, ``:class:`~slimjax.Instance```).
mkdocstrings renders Markdown, so this extension rewrites every role into an optional
mkdocs-autorefs reference: a link when the target is rendered in the API reference, plain code
otherwise (never a broken link or a build warning). Short names are resolved against the public
objects of the package (``Successive`` -> ``slimjax.solvers.Successive``). A paragraph ending in
``::`` (an RST literal block) ends in ``:`` instead.
"""

from __future__ import annotations

import re

import griffe

_ROLE = re.compile(r":(?:py:)?(func|class|mod|data|meth|attr|obj|exc):`(~?)([^`<>]+?)`")


class SphinxRoles(griffe.Extension):
    """Rewrite Sphinx roles in every docstring of a package once it is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        objs: list = []
        names: list[str] = []  # public paths, aliases (re-exports) included
        _walk(pkg, objs, names)
        public: dict[str, str] = {}  # short or partial name -> full public path
        for path in sorted(names, key=lambda p: (p.count("."), p)):  # the shortest path wins
            parts = path.split(".")
            for i in range(len(parts)):
                public.setdefault(".".join(parts[i:]), path)
        for obj in objs:
            if obj.docstring is not None:
                obj.docstring.value = _rewrite(obj.docstring.value, public)


def _walk(obj, objs: list, names: list[str]) -> None:
    objs.append(obj)
    if not any(part.startswith("_") for part in obj.path.split(".")[1:]):
        names.append(obj.path)
    for name, member in list(obj.members.items()):
        if member.is_alias:
            if not name.startswith("_") and not any(p.startswith("_") for p in obj.path.split(".")[1:]):
                names.append(f"{obj.path}.{name}")
            continue
        if member.is_module or member.is_class:
            _walk(member, objs, names)
        else:
            objs.append(member)
            if not any(part.startswith("_") for part in member.path.split(".")[1:]):
                names.append(member.path)


def _rewrite(text: str, public: dict[str, str]) -> str:
    def repl(m: re.Match) -> str:
        tilde, target = m.group(2), m.group(3).strip()
        name = target.rstrip("()")
        shown = name.split(".")[-1] if tilde else name
        full = public.get(name) or public.get(name.removeprefix("slimjax."))
        code = f"<code>{shown}</code>"
        if full is None:
            return code
        return f'<autoref identifier="{full}" optional>{code}</autoref>'

    text = _ROLE.sub(repl, text)
    return re.sub(r"(\S)::[ \t]*$", r"\1:", text, flags=re.M)
