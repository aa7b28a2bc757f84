"""Packages are found, not listed: every ``gp_activations`` subpackage is in the wheel, and the
top-level ``primitives/`` (the built-in search spaces) installs as ``gp_activations.primitives``.
Everything else is in ``setup.cfg``."""

from setuptools import find_packages, setup

setup(packages=find_packages(include=["gp_activations", "gp_activations.*"])
      + ["gp_activations.primitives"],
      package_dir={"gp_activations.primitives": "primitives"})
