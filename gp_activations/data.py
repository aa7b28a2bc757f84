"""Datasets as in-memory tensors, plus vectorised crop/flip augmentation.

Every dataset is loaded once into float32 tensors (inputs normalised, labels int64),
split into train / validation / test, and moved to the device once
(:meth:`Dataset.to`).  The trainer then slices mini-batches with index tensors; there
is no DataLoader in the hot loop.

Datasets (see :data:`DATASETS`):

``mnist1d`` (default)
    Generated locally with the ``mnist1d`` package (10,000 samples, the package's fixed
    generation seed), input ``(N, 1, 40)``.  Nothing is downloaded and nothing is written
    to disk: :func:`mnist1d.data.make_dataset` is called directly (``get_dataset`` would
    try to download a pickle and write it into the current directory).  The arrays are
    cached in-process, so only the first load in a process pays the ~2 s generation.
    Splits: the package's 8,000-sample train part -> 7,000 train + 1,000 validation; its
    2,000-sample test part is the test set.
``digits``
    scikit-learn's bundled 8x8 digits (1,797 images), input ``(N, 1, 8, 8)``, scaled to
    [0, 1] and standardised.  Splits: 360 test (20 %, stratified, fixed), then 10 % of
    the rest as validation (144) and 1,293 train.
``cifar10`` / ``cifar100``
    torchvision's on-disk "python version" files under ``data_dir``, read with
    :class:`torchvision.datasets.CIFAR10` / ``CIFAR100``; input ``(N, 3, 32, 32)``
    normalised with the standard per-channel CIFAR mean/std.  Splits: 45,000 train +
    5,000 validation (10 % of the train files for smaller subsets), 10,000 test.

The ``seed`` argument of :func:`load_dataset` only selects the train/validation split;
the test split and the generated data never depend on it.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import pickle
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from .errors import UserError

__all__ = [
    "DATASETS",
    "DEFAULT_DATASET",
    "DATA_DIR_ENV",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "Dataset",
    "DatasetInfo",
    "ChecksumNotVerifiedWarning",
    "as_dataset",
    "augment_crop_flip",
    "apply_crop_flip",
    "crop_flip_params",
    "dataset_names",
    "default_data_dir",
    "get_dataset_info",
    "load_dataset",
]

logger = logging.getLogger(__name__)

DEFAULT_DATASET = "mnist1d"
DATA_DIR_ENV = "GP_ACTIVATIONS_DATA"

# Standard per-channel statistics of the CIFAR training sets, on the [0, 1] pixel scale.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

MNIST1D_NUM_SAMPLES = 10_000
MNIST1D_SEED = 42  # the mnist1d package's own default generation seed
MNIST1D_VAL = 1_000
DIGITS_TEST_FRACTION = 0.2
DIGITS_TEST_SEED = 0  # the digits test split is fixed, whatever ``seed`` is
VAL_FRACTION = 0.1
CIFAR_VAL = 5_000
#: A user's data without a test split: this fraction of the given (training) samples is
#: carved off as the test set, with a fixed seed (whatever the run's seed), before the
#: validation split is drawn from the rest -- the search never sees it.
CUSTOM_TEST_FRACTION = 0.15
CUSTOM_TEST_SEED = 0


class ChecksumNotVerifiedWarning(UserWarning):
    """CIFAR files were loaded with ``verify=False``: their md5 sums were not checked."""


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset (no data)."""

    name: str
    num_classes: int
    default_model: str
    description: str
    input_shape: tuple
    augment: bool = False


DATASETS: dict = {
    "mnist1d": DatasetInfo(
        "mnist1d", 10, "cnn1d",
        "MNIST-1D: 10,000 generated 1-D digit signals of length 40 (no download, seconds)",
        (1, 40)),
    "mnist1d_hard": DatasetInfo(
        "mnist1d_hard", 10, "resnet1d",
        "MNIST-1D with doubled noise (corr 0.4, iid 0.04) and a 4,000-sample test set, "
        "for normalised residual networks (generated, no download)",
        (1, 40)),
    "digits": DatasetInfo(
        "digits", 10, "cnn_digits",
        "scikit-learn 8x8 handwritten digits: 1,797 grey images (bundled, no download)",
        (1, 8, 8)),
    "cifar10": DatasetInfo(
        "cifar10", 10, "resnet20",
        "CIFAR-10: 60,000 32x32 colour images in 10 classes (torchvision files)",
        (3, 32, 32), augment=True),
    "cifar100": DatasetInfo(
        "cifar100", 100, "resnet20",
        "CIFAR-100: 60,000 32x32 colour images in 100 classes (torchvision files)",
        (3, 32, 32), augment=True),
}

_ALIASES = {
    "mnist-1d": "mnist1d",
    "mnist_1d": "mnist1d",
    "cifar-10": "cifar10",
    "cifar_10": "cifar10",
    "cifar-100": "cifar100",
    "cifar_100": "cifar100",
}


def dataset_names() -> list:
    """Known dataset names, the default first."""
    return list(DATASETS)


def _canonical_name(name) -> str:
    if not isinstance(name, str):
        raise UserError(f"dataset name must be a string, got {name!r}; "
                        f"known datasets: {', '.join(dataset_names())}")
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; known datasets: {', '.join(dataset_names())}")
    return key


def describe_test_split(source, test_size=None) -> str:
    """Where the test split of ``source`` (a dataset name, a Dataset, or a user's data as
    :func:`as_dataset` takes it) comes from -- what reports print next to test accuracy;
    ``test_size``: ``mnist1d_hard``'s test split cut or grown to that size."""
    if test_size is not None:
        if test_size <= MNIST1D_HARD_TEST:
            return f"the first {test_size:,} samples of the generator's test part (mnist1d_hard)"
        return (f"{test_size:,} samples: the generator's {MNIST1D_HARD_TEST:,}-sample test part "
                f"+ {test_size - MNIST1D_HARD_TEST:,} generated with the same settings (seed "
                f"{MNIST1D_HARD_EXTRA_SEEDS['test']}; mnist1d_hard)")
    if isinstance(source, str) and ":" not in source:
        key = _canonical_name(source)
        if key == "mnist1d":
            return "the mnist1d package's 2,000-sample test part"
        if key == "mnist1d_hard":
            return "the generator's 4,000-sample test part (mnist1d_hard)"
        if key == "digits":
            return (f"{DIGITS_TEST_FRACTION:.0%} of the digits, stratified, fixed seed "
                    f"{DIGITS_TEST_SEED}")
        return "the official 10,000-image test files"
    return as_dataset(source).test_source


def get_dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` for ``name`` (case-insensitive); UserError if unknown."""
    return DATASETS[_canonical_name(name)]


def default_data_dir() -> Path:
    """``$GP_ACTIVATIONS_DATA`` if set, else ``~/.cache/gp-activations/data``."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/gp-activations/data").expanduser()


# --------------------------------------------------------------------------- Dataset


@dataclass
class Dataset:
    """Train / validation / test tensors of one dataset.

    Inputs are float32 and normalised: ``x = (raw - mean) / std`` per channel, where raw
    pixels are on the [0, 1] scale (for ``mnist1d`` the package already standardises the
    signals, so ``mean=(0.0,)``, ``std=(1.0,)``).  Labels are int64 in
    ``[0, num_classes)``.  ``augment`` says whether the trainer should apply
    :func:`augment_crop_flip` to training batches (CIFAR only).
    """

    name: str
    num_classes: int
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    augment: bool = False
    mean: tuple = ()
    std: tuple = ()
    #: Where the test split comes from, as reports print it ("the package's 2,000-sample test
    #: part", "carved: 15 % of the given data, fixed seed 0", ...).
    test_source: str = "given"

    @property
    def input_shape(self) -> tuple:
        """Shape of one input, without the batch dimension, e.g. ``(3, 32, 32)``."""
        return tuple(self.x_train.shape[1:])

    @property
    def device(self) -> torch.device:
        return self.x_train.device

    def to(self, device, non_blocking: bool = False) -> "Dataset":
        """A copy with every tensor on ``device`` (tensors already there are shared)."""
        moved = {
            f: getattr(self, f).to(device, non_blocking=non_blocking)
            for f in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
        }
        return dataclasses.replace(self, **moved)

    def split(self, which: str):
        """``(x, y)`` of ``"train"``, ``"val"`` or ``"test"``."""
        if which not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {which!r}")
        return getattr(self, f"x_{which}"), getattr(self, f"y_{which}")

    def __repr__(self) -> str:
        return (f"Dataset(name={self.name!r}, num_classes={self.num_classes}, "
                f"train={len(self.y_train)}, val={len(self.y_val)}, test={len(self.y_test)}, "
                f"input_shape={self.input_shape}, augment={self.augment}, "
                f"device={self.device})")


# --------------------------------------------------------------------------- loading


def load_dataset(name: str = DEFAULT_DATASET, *, data_dir=None, download: bool = False,
                 verify: bool = True, device="cpu", seed: int = 0, val_size=None,
                 test_size=None) -> Dataset:
    """Load ``name`` into memory, split it, and move it to ``device``.

    ``data_dir``, ``download`` and ``verify`` only matter for the CIFAR datasets:
    ``data_dir`` defaults to :func:`default_data_dir`; ``download=True`` lets torchvision
    fetch missing files; ``verify=False`` skips the md5 checks (accepting subsets in the
    same layout) and warns with :class:`ChecksumNotVerifiedWarning`.  ``seed`` selects
    the train/validation split only.  ``val_size`` / ``test_size`` (``mnist1d_hard`` only)
    enlarge its validation / test split with generated samples (see
    :func:`_mnist1d_hard_extra`); the training set stays the same.  Bad names, sizes and
    missing or corrupt files raise :class:`~gp_activations.errors.UserError` with a one-line
    message.
    """
    key = check_split_sizes(name, val_size, test_size)
    if key in ("mnist1d", "mnist1d_hard"):
        ds = _load_mnist1d(seed, key, val_size, test_size)
    elif key == "digits":
        ds = _load_digits(seed)
    else:
        ds = _load_cifar(key, data_dir=data_dir, download=download, verify=verify, seed=seed)
    if torch.device(device) != ds.device:
        ds = ds.to(device)
    return ds


def check_split_sizes(name: str, val_size=None, test_size=None) -> str:
    """The canonical dataset name, once ``val_size`` / ``test_size`` are known to be valid for
    it (options of ``mnist1d_hard`` only; positive integers up to :data:`MNIST1D_MAX_SPLIT`);
    else one :class:`UserError` line.  Generates nothing."""
    key = _canonical_name(name)
    if (val_size is not None or test_size is not None) and key != "mnist1d_hard":
        raise UserError(f"val_size and test_size are options of mnist1d_hard only, not {key}")
    for label, value in (("val_size", val_size), ("test_size", test_size)):
        if value is not None:
            _split_size(label, value)
    return key


def _split_indices(n: int, n_val: int, seed: int):
    """Sorted (train, val) index arrays: a seeded random ``n_val`` of ``range(n)`` is val."""
    if not 0 < n_val < n:
        raise UserError(f"cannot carve a validation set of {n_val} from {n} training samples")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _labels(y) -> torch.Tensor:
    return torch.tensor(np.asarray(y), dtype=torch.int64)  # a writable copy


#: ``mnist1d_hard``: MNIST-1D with more correlated and i.i.d. noise (the generator's
#: ``corr_noise_scale`` 0.25 -> 0.4, ``iid_noise_scale`` 0.02 -> 0.04), so that a normalised
#: residual network lands clearly below the ceiling, and a 4,000-sample test set (one sample =
#: 0.025 points): 12,000 generated, 8,000 for training (7,000 train + 1,000 validation).
MNIST1D_HARD = dict(num_samples=12_000, train_split=2 / 3, corr_noise_scale=0.4,
                    iid_noise_scale=0.04)


@functools.lru_cache(maxsize=None)
def _mnist1d_arrays(num_samples: int = MNIST1D_NUM_SAMPLES, gen_seed: int = MNIST1D_SEED,
                    train_split: float = 0.8, corr_noise_scale: float = 0.25,
                    iid_noise_scale: float = 0.02):
    """MNIST-1D as read-only arrays: generated once per machine, then read from an ``.npz``
    in the data directory (~3 s to generate, ~10 ms to read -- it is paid by every worker
    process of a search otherwise).  Cached per process as well.
    """
    from importlib.metadata import version

    variant = ((train_split, corr_noise_scale, iid_noise_scale) != (0.8, 0.25, 0.02))
    tag = f"-s{train_split:.4f}-c{corr_noise_scale:g}-i{iid_noise_scale:g}" if variant else ""
    path = default_data_dir() / f"mnist1d-{num_samples}-{gen_seed}{tag}-v{version('mnist1d')}.npz"
    keys = ("x", "y", "x_test", "y_test")
    try:
        with np.load(path, allow_pickle=False) as npz:  # plain arrays only: nothing unpickled
            out = tuple(np.asarray(npz[k]) for k in keys)
    except (OSError, KeyError, ValueError):
        out = _generate_mnist1d(num_samples, gen_seed, train_split=train_split,
                                corr_noise_scale=corr_noise_scale,
                                iid_noise_scale=iid_noise_scale)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
            np.savez(tmp, **dict(zip(keys, out)))
            os.replace(tmp, path)  # atomic: concurrent workers never read half a file
        except OSError:
            pass  # an unwritable cache only costs the generation next time
    for a in out:
        a.setflags(write=False)
    return out


def _generate_mnist1d(num_samples: int, gen_seed: int, **generator_args):
    """Generate MNIST-1D with the ``mnist1d`` package.

    Calls ``make_dataset`` directly: ``mnist1d.data.get_dataset`` would download a pickle
    from GitHub and/or write ``./mnist1d_data.pkl`` into the current directory.
    ``make_dataset`` reseeds the *global* ``random`` and ``numpy.random`` generators, so
    their states are saved and restored around it (evolution code relies on them).
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = int(num_samples)
    args.seed = int(gen_seed)
    args.url = None  # never used by make_dataset; make sure nothing could fetch it
    for key, value in generator_args.items():
        setattr(args, key, value)
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        raw = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return (
        np.asarray(raw["x"], dtype=np.float32),
        np.asarray(raw["y"], dtype=np.int64),
        np.asarray(raw["x_test"], dtype=np.float32),
        np.asarray(raw["y_test"], dtype=np.int64),
    )


#: ``mnist1d_hard``'s larger validation / test splits (issue 19, opt-in:
#: ``load_dataset("mnist1d_hard", val_size=..., test_size=...)``).  On resnet1d the split is most
#: of the seed-to-seed spread (``benchmarks/noise.py``: on the 1,000 validation samples ~96 %
#: of the variance, on the 4,000 test samples ~75-86 %; the networks' own spread is ~0.1
#: point).  The samples beyond the dataset's own 1,000 / 4,000 come from the same generator
#: and noise settings with their own generation seeds, standardised with the original
#: generation's constants (the generator standardises each set by itself), are checked to share
#: no row with the dataset, and are cached in the data directory like the dataset.
MNIST1D_HARD_TEST = 4_000
MNIST1D_HARD_EXTRA_SEEDS = {"val": 4242, "test": 4243}
#: the most samples one split may have (a generation of 200,000 takes minutes and 32 MB)
MNIST1D_MAX_SPLIT = 200_000


def mnist1d_raw(num_samples: int, gen_seed: int, **generator_args):
    """The generator's signals *before* its per-set standardisation: ``make_dataset``'s loop,
    on the same random stream (the global random states are restored)."""
    from mnist1d.data import get_dataset_args, get_templates, transform

    args = get_dataset_args()
    args.num_samples, args.seed, args.url = int(num_samples), int(gen_seed), None
    for key, value in generator_args.items():
        setattr(args, key, value)
    templates = get_templates()
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        random.seed(args.seed)
        np.random.seed(args.seed)
        xs, ys = [], []
        for label in range(len(templates["y"])):
            for _ in range(args.num_samples // len(templates["y"])):
                x, _t = transform(templates["x"][label], templates["t"], args)
                xs.append(x)
                ys.append(templates["y"][label])
        shuffle = np.random.permutation(len(ys))
        return np.stack(xs)[shuffle], np.stack(ys)[shuffle].astype(np.int64)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def _cached_npz(path: Path, keys: tuple, make):
    """Arrays ``keys`` read from ``path``, or made by ``make()`` and written there atomically."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return tuple(np.asarray(npz[k]) for k in keys)
    except (OSError, KeyError, ValueError):
        out = make()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
            np.savez(tmp, **dict(zip(keys, out)))
            os.replace(tmp, path)
        except OSError:
            pass  # an unwritable cache only costs the generation next time
        return out


def _hard_tag() -> str:
    from importlib.metadata import version

    h = MNIST1D_HARD
    return (f"{h['num_samples']}-{MNIST1D_SEED}-s{h['train_split']:.4f}-c{h['corr_noise_scale']:g}"
            f"-i{h['iid_noise_scale']:g}-v{version('mnist1d')}")


@functools.lru_cache(maxsize=None)
def _mnist1d_hard_norm():
    """(mean, std) with which the generator standardised ``mnist1d_hard``: recomputed from its
    raw signals (once per machine, ~3 s) and checked to reproduce the cached arrays."""
    def make():
        args = {k: v for k, v in MNIST1D_HARD.items() if k != "num_samples"}
        raw, _ = mnist1d_raw(MNIST1D_HARD["num_samples"], MNIST1D_SEED, **args)
        mean, std = raw.mean(), raw.std()
        x, _y, x_test, _yt = _mnist1d_arrays(**MNIST1D_HARD)
        if not np.allclose(((raw - mean) / std).astype(np.float32), np.concatenate([x, x_test]),
                           atol=1e-5):  # pragma: no cover - another mnist1d version
            raise UserError("mnist1d_hard: the installed mnist1d generator does not reproduce "
                            "the dataset; larger splits cannot be generated")
        return np.float64(mean), np.float64(std)

    mean, std = _cached_npz(default_data_dir() / f"mnist1d-norm-{_hard_tag()}.npz",
                            ("mean", "std"), make)
    return float(mean), float(std)


@functools.lru_cache(maxsize=None)
def _mnist1d_hard_extra(which: str, num_samples: int):
    """``num_samples`` fresh ``mnist1d_hard`` samples for split ``which`` ("val" or "test") as
    read-only (x, y) arrays: generated once per machine (about 1 s per 1,000 samples on one
    core) with the generation seed ``MNIST1D_HARD_EXTRA_SEEDS[which]``, then read from an
    ``.npz`` in the data directory (1.6 MB per 10,000 samples)."""
    seed = MNIST1D_HARD_EXTRA_SEEDS[which]

    def make():
        mean, std = _mnist1d_hard_norm()
        args = {k: v for k, v in MNIST1D_HARD.items() if k != "num_samples"}
        raw, y = mnist1d_raw(-(-num_samples // 10) * 10, seed, **args)
        x = ((raw - mean) / std).astype(np.float32)[:num_samples]
        x_orig, _y, x_test, _yt = _mnist1d_arrays(**MNIST1D_HARD)
        seen = {row.tobytes() for row in np.concatenate([x_orig, x_test])}
        if any(row.tobytes() in seen for row in x):  # pragma: no cover - never seen
            raise UserError(f"mnist1d_hard: generated {which} samples repeat the dataset's")
        return x, y[:num_samples]

    path = default_data_dir() / f"mnist1d-extra-{which}-{num_samples}-{seed}-{_hard_tag()}.npz"
    out = _cached_npz(path, ("x", "y"), make)
    for a in out:
        a.setflags(write=False)
    return out


def _split_size(label: str, value) -> int:
    """A split size option as an int; UserError (one line) unless a positive integer within
    :data:`MNIST1D_MAX_SPLIT`."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not ok or value < 1:
        raise UserError(f"{label} must be a positive integer, got {value!r}")
    if value > MNIST1D_MAX_SPLIT:
        raise UserError(f"{label} of {value:,} is more than the {MNIST1D_MAX_SPLIT:,} samples "
                        f"a generated mnist1d_hard split may have")
    return int(value)


def _grown(which: str, x, y, size):
    """The split ``(x, y)`` cut or grown to ``size`` samples (its own samples first)."""
    if size is None:
        return x, y, 0
    n = _split_size(f"{which}_size", size)
    if n <= len(y):
        return x[:n], y[:n], 0
    xe, ye = _mnist1d_hard_extra(which, n - len(y))
    return np.concatenate([x, xe]), np.concatenate([y, ye]), n - len(y)


def _load_mnist1d(seed: int, name: str = "mnist1d", val_size=None, test_size=None) -> Dataset:
    variant = MNIST1D_HARD if name == "mnist1d_hard" else {}
    x, y, x_test, y_test = _mnist1d_arrays(**variant)
    tr, va = _split_indices(len(y), MNIST1D_VAL, seed)
    x_val, y_val, _ = _grown("val", x[va], y[va], val_size)
    x_test, y_test, extra = _grown("test", x_test, y_test, test_size)

    def xs(a):  # (N, 40) -> (N, 1, 40), a fresh writable float32 tensor
        return torch.tensor(a[:, None, :], dtype=torch.float32)

    source = f"the mnist1d package's {len(y_test) - extra:,}-sample test part"
    if extra:
        source += (f" + {extra:,} generated with the same settings (seed "
                   f"{MNIST1D_HARD_EXTRA_SEEDS['test']})")
    return Dataset(name, 10, xs(x[tr]), _labels(y[tr]), xs(x_val), _labels(y_val),
                   xs(x_test), _labels(y_test), augment=False, mean=(0.0,), std=(1.0,),
                   test_source=source)


@functools.lru_cache(maxsize=None)
def _digits_arrays():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.asarray(d.data, dtype=np.float32) / 16.0
    y = np.asarray(d.target, dtype=np.int64)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def _load_digits(seed: int) -> Dataset:
    from sklearn.model_selection import train_test_split

    x, y = _digits_arrays()
    idx = np.arange(len(y))
    rest, test = train_test_split(idx, test_size=DIGITS_TEST_FRACTION, stratify=y,
                                  random_state=DIGITS_TEST_SEED)
    tr, va = train_test_split(rest, test_size=VAL_FRACTION, stratify=y[rest],
                              random_state=seed)
    tr, va, test = np.sort(tr), np.sort(va), np.sort(test)
    # one channel: statistics of everything except the test split (seed-independent)
    mean = float(x[rest].mean())
    std = float(x[rest].std())

    def xs(ix):
        t = torch.tensor(x[ix], dtype=torch.float32).reshape(-1, 1, 8, 8)
        return t.sub_(mean).div_(std)

    return Dataset("digits", 10, xs(tr), _labels(y[tr]), xs(va), _labels(y[va]),
                   xs(test), _labels(y[test]), augment=False, mean=(mean,), std=(std,),
                   test_source=f"{len(test)} samples ({DIGITS_TEST_FRACTION:.0%}, stratified, "
                               f"fixed seed {DIGITS_TEST_SEED})")


# ----------------------------------------------------------------------------- CIFAR

_CIFAR = {
    # key: (display name, expected files (display), hint for the archive)
    "cifar10": ("CIFAR-10", "cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}",
                "cifar-10-python.tar.gz"),
    "cifar100": ("CIFAR-100", "cifar-100-python/{train,test,meta}", "cifar-100-python.tar.gz"),
}


def _tv_class(key: str, verify: bool):
    """torchvision's CIFAR class, or an unverified subclass (md5 entries set to None)."""
    from torchvision import datasets as tvd

    base = tvd.CIFAR10 if key == "cifar10" else tvd.CIFAR100
    if verify:
        return base
    return _unverified_class(base)


@functools.lru_cache(maxsize=None)
def _unverified_class(base):
    return type(
        f"Unverified{base.__name__}",
        (base,),
        {
            "__doc__": f"{base.__name__} that accepts files whose md5 sums differ (subsets).",
            "train_list": [[f, None] for f, _ in base.train_list],
            "test_list": [[f, None] for f, _ in base.test_list],
            "meta": {**base.meta, "md5": None},
        },
    )


def _cifar_files(key: str) -> list:
    from torchvision import datasets as tvd

    base = tvd.CIFAR10 if key == "cifar10" else tvd.CIFAR100
    names = [f for f, _ in base.train_list + base.test_list] + [base.meta["filename"]]
    return [os.path.join(base.base_folder, f) for f in names]


def _one_line(text) -> str:
    return " ".join(str(text).split())


def _missing_message(key: str, root: Path, extra: str = "") -> str:
    title, files, archive = _CIFAR[key]
    return _one_line(
        f"{title} files not found in {root}{extra}: expected {files}; "
        f"run with --download to fetch them, or copy the python-version archive ({archive}) "
        f"there and extract it")


def _corrupt_message(key: str, root: Path, detail: str, verify: bool) -> str:
    title, files, archive = _CIFAR[key]
    hint = ("; if these are deliberately a subset in the same layout, load with verify=False "
            "(--no-verify) to skip the md5 checks" if verify else "")
    return _one_line(
        f"{title} files in {root} are corrupt ({detail}): expected torchvision's {files}; "
        f"delete them and rerun with --download, or copy the python-version archive "
        f"({archive}) there and extract it{hint}")


def _read_cifar(key: str, root: Path, download: bool, verify: bool):
    """Raw arrays ``(x_train uint8 NHWC, y_train, x_test, y_test, classes)``."""
    files = [root / f for f in _cifar_files(key)]
    if not all(f.is_file() for f in files):
        if not download:
            missing = [str(f.relative_to(root)) for f in files if not f.is_file()]
            extra = "" if root.is_dir() else " (the directory does not exist)"
            if root.is_dir() and len(missing) < len(files):
                extra = f" (missing {', '.join(missing)})"
            raise UserError(_missing_message(key, root, extra))
        cls = _tv_class(key, verify)
        try:
            root.mkdir(parents=True, exist_ok=True)
            cls(str(root), train=False, download=True)
        except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as e:
            raise UserError(_one_line(
                f"could not download {_CIFAR[key][0]} into {root}: {type(e).__name__}: {e}; "
                f"copy the python-version archive ({_CIFAR[key][2]}) there and extract it "
                f"(expected {_CIFAR[key][1]})")) from e
    signature = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    return _read_cifar_cached(key, str(root), verify, signature)


@functools.lru_cache(maxsize=2)
def _read_cifar_cached(key: str, root: str, verify: bool, signature):
    """Read both splits with torchvision (cached per process while the files are unchanged)."""
    del signature  # only part of the cache key
    cls = _tv_class(key, verify)
    num_classes = DATASETS[key].num_classes
    try:
        train = cls(root, train=True, download=False)
        test = cls(root, train=False, download=False)
    except RuntimeError as e:  # torchvision's md5 / existence check
        detail = "md5 checksum mismatch" if verify else _one_line(e)
        raise UserError(_corrupt_message(key, Path(root), detail, verify)) from e
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, ValueError, TypeError,
            AttributeError, IndexError) as e:
        raise UserError(_corrupt_message(
            key, Path(root), f"unreadable: {type(e).__name__}: {_one_line(e)}", verify)) from e
    out = []
    for part in (train, test):
        x = np.ascontiguousarray(part.data, dtype=np.uint8)
        y = np.asarray(part.targets, dtype=np.int64)
        if x.ndim != 4 or x.shape[1:] != (32, 32, 3) or len(x) != len(y) or len(y) == 0:
            raise UserError(_corrupt_message(
                key, Path(root), f"bad array shapes {x.shape} / {y.shape}", verify))
        if y.min() < 0 or y.max() >= num_classes:
            raise UserError(_corrupt_message(
                key, Path(root), f"labels outside [0, {num_classes})", verify))
        x.setflags(write=False)
        y.setflags(write=False)
        out += [x, y]
    return (*out, tuple(train.classes))


def _cifar_to_tensor(x_nhwc: np.ndarray, mean, std) -> torch.Tensor:
    """uint8 (N, 32, 32, 3) -> normalised float32 (N, 3, 32, 32), contiguous NCHW."""
    if not x_nhwc.flags.writeable or not x_nhwc.flags.c_contiguous:
        x_nhwc = np.array(x_nhwc, dtype=np.uint8, order="C")  # cheap uint8 copy
    src = torch.from_numpy(x_nhwc).permute(0, 3, 1, 2)
    out = torch.empty(src.shape, dtype=torch.float32)
    out.copy_(src)
    m = torch.tensor(mean, dtype=torch.float32).mul_(255.0).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).mul_(255.0).view(1, -1, 1, 1)
    return out.sub_(m).div_(s)


def _load_cifar(key: str, *, data_dir, download: bool, verify: bool, seed: int) -> Dataset:
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    root = root.resolve()
    x_tr, y_tr, x_te, y_te, _classes = _read_cifar(key, root, download, verify)
    if not verify:
        msg = (f"{_CIFAR[key][0]} checksums were not verified (verify=False): "
               f"files in {root} are accepted as they are")
        warnings.warn(msg, ChecksumNotVerifiedWarning, stacklevel=3)
        logger.debug(msg)
    n = len(y_tr)
    n_val = CIFAR_VAL if n >= 10 * CIFAR_VAL else max(1, int(round(VAL_FRACTION * n)))
    tr, va = _split_indices(n, n_val, seed)
    mean, std = (CIFAR10_MEAN, CIFAR10_STD) if key == "cifar10" else (CIFAR100_MEAN, CIFAR100_STD)
    return Dataset(
        key, DATASETS[key].num_classes,
        _cifar_to_tensor(x_tr[tr], mean, std), _labels(y_tr[tr]),
        _cifar_to_tensor(x_tr[va], mean, std), _labels(y_tr[va]),
        _cifar_to_tensor(x_te, mean, std), _labels(y_te),
        augment=True, mean=tuple(mean), std=tuple(std),
        test_source=f"the official {len(y_te):,}-image test files")


# ------------------------------------------------------------------------ augmentation


def crop_flip_params(n: int, pad: int = 4, generator: Optional[torch.Generator] = None,
                     device=None):
    """Random ``(dy, dx, flip)`` for ``n`` samples: offsets in ``[0, 2*pad]``, flip bool.

    Drawn on the generator's device (or ``device`` when there is no generator), in this
    order: ``randint(0, 2*pad+1, (2, n))`` for (dy, dx), then ``randint(0, 2, (n,))``
    for the flips; then moved to ``device``.
    """
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    gen_device = generator.device if generator is not None else device
    offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator, device=gen_device)
    flip = torch.randint(0, 2, (n,), generator=generator, device=gen_device).bool()
    if device is not None:
        offsets, flip = offsets.to(device), flip.to(device)
    return offsets[0], offsets[1], flip


def apply_crop_flip(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor,
                    pad: int = 4) -> torch.Tensor:
    """Zero-pad ``x`` by ``pad``, crop ``H x W`` at ``(dy[i], dx[i])``, then flip sample
    ``i`` horizontally where ``flip[i]``.  One gather for the whole batch (no Python loop
    over samples); keeps shape, dtype, device and channels_last layout.
    """
    if x.dim() != 4:
        raise ValueError(f"expected an (N, C, H, W) batch, got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    dev = x.device
    dy, dx, flip = dy.to(dev), dx.to(dev), flip.to(dev)
    padded = F.pad(x, (pad, pad, pad, pad)) if pad else x
    rows = dy[:, None] + torch.arange(h, device=dev)  # (N, H)
    cols_fwd = torch.arange(w, device=dev)
    cols = dx[:, None] + torch.where(flip[:, None], w - 1 - cols_fwd, cols_fwd)  # (N, W)
    ni = torch.arange(n, device=dev)
    if channels_last:
        # gather whole pixels (C contiguous): (N, H, W, C) -> channels_last (N, C, H, W)
        out = padded.permute(0, 2, 3, 1)[ni[:, None, None], rows[:, :, None], cols[:, None, :]]
        return out.permute(0, 3, 1, 2)
    ci = torch.arange(c, device=dev)
    return padded[ni[:, None, None, None], ci[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


def augment_crop_flip(x: torch.Tensor, generator: Optional[torch.Generator] = None,
                      pad: int = 4) -> torch.Tensor:
    """Random ``pad``-pixel zero-padded crop + random horizontal flip of a whole batch.

    ``x`` is ``(N, C, H, W)`` on any device (contiguous or channels_last); the result has
    the same shape, dtype, device and memory format.  Deterministic given ``generator``
    (which may live on the CPU while ``x`` is on the GPU).  Vectorised: one padded copy
    and one advanced-indexing gather, no per-sample Python loop.
    """
    if x.dim() != 4:
        raise ValueError(f"expected an (N, C, H, W) batch, got shape {tuple(x.shape)}")
    dy, dx, flip = crop_flip_params(x.shape[0], pad, generator, device=x.device)
    return apply_crop_flip(x, dy, dx, flip, pad)


# ------------------------------------------------------------------------ user data


def as_dataset(source, name: str = "custom", num_classes: Optional[int] = None,
               val_fraction: float = 0.1, seed: int = 0) -> Dataset:
    """Turn a user's data into a :class:`Dataset` (bring-your-own-task).

    ``source`` may be a :class:`Dataset`; a callable returning any of these (called once);
    a tuple/list of tensors ``(x_train, y_train, x_val, y_val[, x_test, y_test])`` or
    ``(x_train, y_train)``; a dict with those keys; or a tuple of torchvision-style datasets
    ``(train[, val[, test]])`` whose items are ``(tensor, label)`` pairs.

    The test split is never the selection split: without test data,
    :data:`CUSTOM_TEST_FRACTION` (15 %) of the given training samples is carved off as the test
    set with the fixed seed :data:`CUSTOM_TEST_SEED`; without validation data,
    ``val_fraction`` of the remaining training samples becomes the validation split (drawn
    with ``seed``).  :attr:`Dataset.test_source` records which happened.
    """
    if isinstance(source, Dataset):
        return source
    if callable(source) and not isinstance(source, torch.utils.data.Dataset):
        return as_dataset(source(), name, num_classes, val_fraction, seed)
    if isinstance(source, dict):
        num_classes = source.get("num_classes", num_classes)
        name = source.get("name", name)
    xs, ys = _xy_pairs(source)
    test_source = "given"
    if len(xs) < 3:  # no test data: carve it from the training samples, fixed seed
        xs, ys, test_source = _carved_splits(xs, ys, val_fraction, seed)
    if num_classes is None:
        num_classes = int(max(int(y.max()) for y in ys)) + 1
    return Dataset(name=name, num_classes=int(num_classes), x_train=xs[0], y_train=ys[0],
                   x_val=xs[1], y_val=ys[1], x_test=xs[2], y_test=ys[2], test_source=test_source)


def _xy_pairs(source) -> tuple:
    """A user's data (tensors, a dict of them, torch datasets) as ([inputs], [labels]): 1-3
    float input tensors and their int64 labels, matching in length."""
    if isinstance(source, dict):
        keys = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
        unknown = set(source) - set(keys) - {"num_classes", "name"}
        if unknown:
            raise UserError(f"custom data: unknown keys {sorted(unknown)}; expected {', '.join(keys)}")
        source = tuple(source[k] for k in keys if source.get(k) is not None)
    if isinstance(source, torch.utils.data.Dataset):
        source = (source,)
    if not isinstance(source, (tuple, list)) or not source:
        raise UserError(f"custom data must be a Dataset, tensors (x_train, y_train, x_val, y_val), "
                        f"a dict or torch datasets; got {type(source).__name__}")
    if all(isinstance(s, torch.utils.data.Dataset) for s in source):
        tensors = []
        for ds in source:
            xs, ys = zip(*[ds[i] for i in range(len(ds))])
            tensors += [torch.stack([torch.as_tensor(v, dtype=torch.float32) for v in xs]),
                        torch.as_tensor(ys)]
        source = tuple(tensors)
    tensors = [torch.as_tensor(t) for t in source]
    if len(tensors) not in (2, 4, 6):
        raise UserError(f"custom data: expected 2, 4 or 6 tensors (x/y pairs), got {len(tensors)}")
    xs, ys = tensors[0::2], [t.long() for t in tensors[1::2]]
    for x, y in zip(xs, ys):
        if len(x) != len(y):
            raise UserError(f"custom data: {len(x)} inputs but {len(y)} labels")
    return [x.float() for x in xs], ys


def _carved_splits(xs: list, ys: list, val_fraction: float, seed: int) -> tuple:
    """(xs, ys, test_source) with the test split carved from the training samples (fixed seed)
    and, without validation data, a validation split too (drawn with ``seed``)."""
    n = len(ys[0])
    n_test = int(round(n * CUSTOM_TEST_FRACTION))
    if n_test < 1 or n - n_test < 2:
        raise UserError(f"custom data: {n} training samples are too few to carve a test split "
                        f"({CUSTOM_TEST_FRACTION:.0%}) from; give (x_test, y_test) as well")
    rest, te = (torch.from_numpy(i) for i in _split_indices(n, n_test, CUSTOM_TEST_SEED))
    test = (xs[0][te], ys[0][te])
    xs, ys = [xs[0][rest]] + xs[1:], [ys[0][rest]] + ys[1:]
    test_source = (f"carved: {len(te)} samples ({CUSTOM_TEST_FRACTION:.0%}) of the given "
                   f"training data, fixed seed {CUSTOM_TEST_SEED}; never seen by the search")
    if len(xs) == 1:
        n_val = max(1, int(round(len(ys[0]) * val_fraction)))
        tr, va = (torch.from_numpy(i) for i in _split_indices(len(ys[0]), n_val, seed))
        xs, ys = [xs[0][tr], xs[0][va]], [ys[0][tr], ys[0][va]]
    return xs + [test[0]], ys + [test[1]], test_source
