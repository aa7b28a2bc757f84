"""Shared test fixtures.

``write_fake_cifar`` writes tiny CIFAR-10 / CIFAR-100 files in torchvision's exact
on-disk layout (so the real torchvision reading code is exercised without the real
180 MB download).  Their md5 sums differ from the real files, so load them with
``verify=False``.  Other test files can import it (``from conftest import
write_fake_cifar``) or use the ``fake_cifar_writer`` fixture.
"""

from __future__ import annotations

import ast
import importlib.util
import pickle
from pathlib import Path

import numpy as np
import torch
import pytest

CIFAR10_LABELS = ["airplane", "automobile", "bird", "cat", "deer",
                  "dog", "frog", "horse", "ship", "truck"]


def _fake_images(rng, labels, num_classes):
    """uint8 (N, 3072) rows (1024 R, 1024 G, 1024 B): noise around a per-class colour.

    Each class has its own mean colour, so a model can learn something from the fakes;
    the overall mean stays close to mid-grey (about zero after CIFAR normalisation).
    """
    colours = np.random.default_rng(1234).uniform(80, 176, size=(num_classes, 3))
    n = len(labels)
    noise = rng.normal(0.0, 40.0, size=(n, 3, 1024))
    img = colours[labels][:, :, None] + noise
    return np.clip(np.rint(img), 0, 255).astype(np.uint8).reshape(n, 3072)


def _balanced_labels(rng, n, num_classes):
    return rng.permutation(np.arange(n) % num_classes).astype(np.int64)


def _dump(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_fake_cifar(root, kind: str = "cifar10", n_train: int = 200, n_test: int = 50,
                     seed: int = 0) -> Path:
    """Write a tiny fake CIFAR in torchvision's layout under ``root``; return ``root``.

    CIFAR-10: ``root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``
    (``n_train`` split over the five batches); CIFAR-100:
    ``root/cifar-100-python/{train, test, meta}``.  Each batch is a pickled dict with
    ``data`` uint8 (N, 3072) and ``labels`` (CIFAR-10) or ``fine_labels`` +
    ``coarse_labels`` (CIFAR-100).  Labels are balanced (every class appears once
    ``n >= num_classes``); data are deterministic given ``seed``.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    if kind == "cifar10":
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True, exist_ok=True)
        y_train = _balanced_labels(rng, n_train, 10)
        x_train = _fake_images(rng, y_train, 10)
        for i, ix in enumerate(np.array_split(np.arange(n_train), 5), start=1):
            _dump(folder / f"data_batch_{i}", {
                "batch_label": f"training batch {i} of 5",
                "labels": [int(v) for v in y_train[ix]],
                "data": x_train[ix],
                "filenames": [f"fake_{j}.png" for j in ix],
            })
        y_test = _balanced_labels(rng, n_test, 10)
        _dump(folder / "test_batch", {
            "batch_label": "testing batch 1 of 1",
            "labels": [int(v) for v in y_test],
            "data": _fake_images(rng, y_test, 10),
            "filenames": [f"fake_test_{j}.png" for j in range(n_test)],
        })
        _dump(folder / "batches.meta", {
            "num_cases_per_batch": max(1, n_train // 5),
            "label_names": list(CIFAR10_LABELS),
            "num_vis": 3072,
        })
    elif kind == "cifar100":
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True, exist_ok=True)
        for fname, n in (("train", n_train), ("test", n_test)):
            fine = _balanced_labels(rng, n, 100)
            _dump(folder / fname, {
                "filenames": [f"fake_{fname}_{j}.png" for j in range(n)],
                "batch_label": f"{fname}ing batch 1 of 1",
                "fine_labels": [int(v) for v in fine],
                "coarse_labels": [int(v) // 5 for v in fine],
                "data": _fake_images(rng, fine, 100),
            })
        _dump(folder / "meta", {
            "fine_label_names": [f"fine_{i}" for i in range(100)],
            "coarse_label_names": [f"coarse_{i}" for i in range(20)],
        })
    else:
        raise ValueError(f"kind must be 'cifar10' or 'cifar100', got {kind!r}")
    return root


@pytest.fixture
def fake_cifar_writer():
    """The :func:`write_fake_cifar` function, for tests that want other sizes."""
    return write_fake_cifar


@pytest.fixture
def fake_cifar10(tmp_path) -> Path:
    """Root dir holding a tiny fake CIFAR-10 (200 train / 50 test); load with verify=False."""
    return write_fake_cifar(tmp_path / "data", "cifar10", n_train=200, n_test=50)


@pytest.fixture
def fake_cifar100(tmp_path) -> Path:
    """Root dir holding a tiny fake CIFAR-100 (300 train / 100 test); load with verify=False."""
    return write_fake_cifar(tmp_path / "data", "cifar100", n_train=300, n_test=100)


@pytest.fixture(scope="module")
def one_thread():
    """One CPU thread for a module's tests: on a shared, busy CPU two OpenMP threads spin-wait
    for each other and training tests ran up to 10x slower (results are deterministic either
    way).  Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def imported_modules(source: str) -> set:
    """Top-level names a Python source imports (to check an export imports only torch)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module)
    return names


def load_exported(source: str, path, name: str):
    """Write an exported torch source to ``path`` and import it as module ``name``."""
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def halving_lookup_run(tmp_path_factory):
    """Evolution + successive halving + the forest surrogate on the tabular benchmark (fitness
    read, not trained): failures, a rejection, ReLU trained.  Shared: read it, don't change it."""
    from gp_activations.search import SearchConfig, run_search
    from search_helpers import LOOKUP

    out = tmp_path_factory.mktemp("lookup") / "halving"
    run_search(SearchConfig(**LOOKUP, fidelity="halving", surrogate="forest", surrogate_min=8),
               out=out, progress=False)
    return out
