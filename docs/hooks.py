"""MkDocs hook: the code's docstrings use Sphinx roles (:func:`~a.b.c`); mkdocstrings renders
them as ``:func:<code>~a.b.c</code>``.  Show them as plain code names instead."""

import re

_ROLE = re.compile(r":(?:func|class|meth|data|attr|mod|exc|obj|const):<code>(~?)([^<]+)</code>")


def _name(match: re.Match) -> str:
    tilde, name = match.groups()
    if tilde:
        name = name.rsplit(".", 1)[-1]
    return f"<code>{name}</code>"


def on_page_content(html, **kwargs):
    return _ROLE.sub(_name, html)
