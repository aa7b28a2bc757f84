"""The documentation builds: ``mkdocs build --strict`` (a warning is an error -- a broken link,
a page missing from the nav, an API name mkdocstrings cannot find) into a scratch directory,
exactly as ``make docs`` does.  The pages' Python blocks and commands run in
``tests/test_examples.py``; here also every TOML block parses as a search config."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from html import escape as html_escape
from pathlib import Path

import pytest

from gp_activations.search import SearchConfig

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").glob("**/*.md"))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout[-3000:]}{proc.stderr[-5000:]}"
    return out


def test_docs_build_strictly(site):
    assert (site / "index.html").is_file()
    for page in PAGES:  # every page is built (strict mode also fails on one missing from nav)
        rel = page.relative_to(ROOT / "docs").with_suffix("")
        built = site / ("index.html" if rel.name == "index" else rel / "index.html")
        assert built.is_file(), f"{page} was not built"


def test_api_reference_is_generated_from_the_docstrings(site):
    html = (site / "reference" / "index.html").read_text()
    names = re.findall(r"^::: ([\w.]+)", (ROOT / "docs" / "reference.md").read_text(), re.M)
    assert len(names) >= 10
    for name in names:
        assert f'id="{name}"' in html, f"{name} has no entry in the API reference"
    # the text comes from the code, e.g. run_search's docstring
    from gp_activations.search import run_search

    first_line = html_escape(re.split(r"[`:]", run_search.__doc__.strip().splitlines()[0])[0].strip(),
                             quote=False)  # its plain text, up to the first role or code
    assert first_line and first_line in html
    assert ":func:" not in html and ":class:" not in html  # Sphinx roles shown as code (docs/hooks.py)


def _toml_blocks(path: Path) -> list[str]:
    text = re.sub(r"^[ \t]+```", "```", path.read_text(), flags=re.M)
    return re.findall(r"^```toml[^\n]*\n(.*?)^```", text, flags=re.S | re.M)


@pytest.mark.parametrize("page", [ROOT / "README.md"] + PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_toml_blocks_are_valid_search_configs(page):
    for block in _toml_blocks(page):
        SearchConfig.from_dict(tomllib.loads(block), where=f"{page.name} TOML block")
