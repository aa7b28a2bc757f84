"""What `pip install .` and a release install: the wheel and the sdist hold every module of the
package and the built-in search spaces, and the installed wheel runs a search on its own (from a
directory outside the checkout, with the checkout's editable install out of the way)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

# one xdist worker runs this module: its builds write the checkout's gp_activations.egg-info
pytestmark = pytest.mark.xdist_group("packaging")

ROOT = Path(__file__).resolve().parent.parent


def _package_files() -> dict[str, str]:
    """Every module of the package as the wheel must name it -> its path in the checkout."""
    files = {p.relative_to(ROOT).as_posix(): p.relative_to(ROOT).as_posix()
             for p in (ROOT / "gp_activations").rglob("*.py")}
    # the top-level primitives/ installs as the subpackage gp_activations.primitives
    files.update({f"gp_activations/primitives/{p.name}": f"primitives/{p.name}"
                  for p in (ROOT / "primitives").glob("*.py")})
    return files


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    # the sdist first, then the wheel built from it (build's default): no build/ left in the
    # checkout whose stale copies of removed modules could slip into a wheel
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out),
                    str(ROOT)], check=True, capture_output=True, text=True)
    wheel = next(out.glob("*.whl"))
    sdist = next(out.glob("*.tar.gz"))
    return wheel, sdist


def test_every_module_in_wheel_and_sdist(dists):
    wheel, sdist = dists
    expected = _package_files()
    assert "gp_activations/search/driver.py" in expected  # the subpackage once left out
    assert "gp_activations/primitives/pangaea.py" in expected
    in_wheel = set(zipfile.ZipFile(wheel).namelist())
    assert sorted(set(expected) - in_wheel) == []
    with tarfile.open(sdist) as tar:
        top = tar.getnames()[0].split("/")[0]
        in_sdist = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
        assert top.startswith("gp_activations-") or top.startswith("gp-activations-")
    assert sorted(set(expected.values()) - in_sdist) == []
    assert {"setup.py", "setup.cfg", "pyproject.toml", "README.md"} <= in_sdist


def test_installed_wheel_runs_a_search(dists, tmp_path):
    wheel, _ = dists
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    "--target", str(target), str(wheel)], check=True, capture_output=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run([sys.executable, "-c", "import gp_activations.search.driver as d, "
                            "gp_activations.primitives as p; print(d.__file__); print(p.__file__)"],
                           cwd=work, env=env, check=True, capture_output=True, text=True)
    assert all(line.startswith(str(target)) for line in where.stdout.split()), where.stdout
    run = subprocess.run([sys.executable, "-m", "gp_activations.cli", "search", "--out", "run",
                          "--dataset", "digits", "--population", "3",
                          "--generations", "1", "--param-variants", "0", "--epochs", "1",
                          "--executor", "serial"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    exported = subprocess.run([sys.executable, "-m", "gp_activations.cli", "export", "run",
                               "--format", "json"], cwd=work, env=env, capture_output=True,
                              text=True, timeout=120)
    assert exported.returncode == 0, exported.stderr[-2000:]
    record = json.loads(exported.stdout)
    assert record["expression"]
