"""Tests for gp_activations.data: loading, splits, errors and crop/flip augmentation."""

from __future__ import annotations

import os
import pickle
import random
import socket
import urllib.error
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gp_activations import data as D
from gp_activations.data import (DATASETS, ChecksumNotVerifiedWarning, Dataset,
                                  apply_crop_flip, augment_crop_flip, crop_flip_params,
                                  dataset_names, load_dataset)
from gp_activations.errors import UserError

from conftest import write_fake_cifar


def _check_splits(ds: Dataset, n_train, n_val, n_test, input_shape, num_classes):
    assert (len(ds.y_train), len(ds.y_val), len(ds.y_test)) == (n_train, n_val, n_test)
    assert ds.input_shape == input_shape
    assert ds.num_classes == num_classes
    for x, y in (ds.split("train"), ds.split("val"), ds.split("test")):
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape == (len(y), *input_shape)
        assert int(y.min()) >= 0 and int(y.max()) < num_classes
        assert torch.isfinite(x).all()
        assert x.is_contiguous()


def _assert_disjoint(*xs):
    """No input row appears in two splits (rows compared exactly, as bytes)."""
    seen = {}
    for k, x in enumerate(xs):
        for row in x.reshape(len(x), -1).numpy():
            key = row.tobytes()
            assert seen.setdefault(key, k) == k, "a sample appears in two splits"


def _assert_same(a: Dataset, b: Dataset):
    for f in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f


# ----------------------------------------------------------------------- registry


def test_registry():
    assert dataset_names()[0] == "mnist1d" == D.DEFAULT_DATASET
    assert set(dataset_names()) == {"mnist1d", "mnist1d_hard", "digits", "cifar10", "cifar100"}
    assert DATASETS["mnist1d"].default_model == "cnn1d"
    assert DATASETS["digits"].default_model == "cnn_digits"
    assert DATASETS["cifar10"].default_model == DATASETS["cifar100"].default_model == "resnet20"
    assert DATASETS["cifar100"].num_classes == 100
    for info in DATASETS.values():
        assert info.description and "\n" not in info.description


def test_unknown_dataset():
    with pytest.raises(UserError) as exc:
        load_dataset("imagenet")
    msg = str(exc.value)
    assert "imagenet" in msg and "\n" not in msg
    for name in dataset_names():
        assert name in msg


# ----------------------------------------------------------------------- mnist1d


def test_mnist1d_load():
    ds = load_dataset()  # the default
    assert ds.name == "mnist1d" and not ds.augment
    _check_splits(ds, 7000, 1000, 2000, (1, 40), 10)
    _assert_disjoint(ds.x_train, ds.x_val, ds.x_test)
    assert set(ds.y_train.unique().tolist()) == set(range(10))
    assert abs(float(ds.x_train.mean())) < 0.1 and 0.8 < float(ds.x_train.std()) < 1.2
    _assert_same(ds, load_dataset("mnist1d"))  # deterministic
    # seed only moves the train/val boundary; the test split is fixed
    other = load_dataset("MNIST-1D", seed=1)
    assert torch.equal(other.x_test, ds.x_test)
    assert not torch.equal(other.y_val, ds.y_val)
    # each load returns fresh tensors: mutating one must not touch the cache
    ds.x_train.zero_()
    assert load_dataset().x_train.abs().sum() > 0
    assert "tensor" not in repr(ds) and "7000" in repr(ds)


def test_mnist1d_generation_is_offline_writes_nothing_and_keeps_global_rng(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("mnist1d tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.chdir(tmp_path)
    random.seed(123)
    np.random.seed(123)
    expect_py, expect_np = random.random(), np.random.random()
    random.seed(123)
    np.random.seed(123)
    # the uncached generator, on a small size to stay fast
    x, y, x_test, y_test = D._mnist1d_arrays.__wrapped__(num_samples=500)
    assert x.shape == (400, 40) and x_test.shape == (100, 40) and len(y) == 400
    assert list(tmp_path.iterdir()) == []  # no ./mnist1d_data.pkl or anything else
    assert random.random() == expect_py and np.random.random() == expect_np


# ------------------------------------------------------------------------ digits


def test_digits_load():
    ds = load_dataset("digits")
    _check_splits(ds, 1293, 144, 360, (1, 8, 8), 10)
    _assert_disjoint(ds.x_train, ds.x_val, ds.x_test)  # the 1,797 images are all distinct
    assert abs(float(ds.x_train.mean())) < 0.1
    assert len(ds.mean) == len(ds.std) == 1
    _assert_same(ds, load_dataset("digits"))
    assert torch.equal(load_dataset("digits", seed=3).y_test, ds.y_test)
    # stratified test split: every class present
    assert set(ds.y_test.tolist()) == set(range(10))


def test_to_device_copies_dataclass():
    ds = load_dataset("digits")
    moved = ds.to("meta")
    assert moved is not ds and moved.device.type == "meta" and ds.device.type == "cpu"
    assert moved.x_val.device.type == "meta" and moved.y_test.device.type == "meta"
    assert moved.input_shape == ds.input_shape and moved.mean == ds.mean
    assert load_dataset("digits", device="meta").x_train.device.type == "meta"


# ------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("kind,fixture,n_train,n_test,classes", [
    ("cifar10", "fake_cifar10", 200, 50, 10),
    ("cifar100", "fake_cifar100", 300, 100, 100),
])
def test_fake_cifar_load_unverified(kind, fixture, n_train, n_test, classes, request):
    root = request.getfixturevalue(fixture)
    with pytest.warns(ChecksumNotVerifiedWarning, match="not verified"):
        ds = load_dataset(kind, data_dir=root, verify=False)
    assert ds.name == kind and ds.augment
    n_val = n_train // 10
    _check_splits(ds, n_train - n_val, n_val, n_test, (3, 32, 32), classes)
    _assert_disjoint(ds.x_train, ds.x_val, ds.x_test)
    assert len(ds.mean) == len(ds.std) == 3
    assert float(ds.x_train.mean().abs()) < 0.3  # roughly zero mean after normalisation

    # the values are the raw file pixels, normalised per channel
    with open(root / ("cifar-10-batches-py/test_batch" if kind == "cifar10"
                      else "cifar-100-python/test"), "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    first = torch.tensor(raw["data"][0], dtype=torch.float32).reshape(3, 32, 32) / 255
    mean = torch.tensor(ds.mean).view(3, 1, 1)
    std = torch.tensor(ds.std).view(3, 1, 1)
    torch.testing.assert_close(ds.x_test[0], (first - mean) / std)
    label_key = "labels" if kind == "cifar10" else "fine_labels"
    assert ds.y_test.tolist() == raw[label_key]

    with pytest.warns(ChecksumNotVerifiedWarning):
        again = load_dataset(kind, data_dir=root, verify=False)
    _assert_same(ds, again)


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_fake_cifar_rejected_when_verified(kind, tmp_path):
    root = write_fake_cifar(tmp_path, kind, n_train=20, n_test=10)
    with pytest.raises(UserError) as exc:
        load_dataset(kind, data_dir=root)
    msg = str(exc.value)
    assert str(root.resolve()) in msg and "\n" not in msg
    assert "corrupt" in msg and "verify=False" in msg


@pytest.mark.parametrize("kind,expected", [
    ("cifar10", "cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}"),
    ("cifar100", "cifar-100-python/{train,test,meta}"),
])
def test_missing_directory(kind, expected, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError) as exc:
        load_dataset(kind, data_dir=missing)
    msg = str(exc.value)
    assert "\n" not in msg
    assert str(missing) in msg and expected in msg and "--download" in msg
    assert not missing.exists()  # nothing created without download=True


def test_partially_missing_files_named(fake_cifar10):
    os.remove(fake_cifar10 / "cifar-10-batches-py" / "data_batch_3")
    with pytest.raises(UserError, match="data_batch_3"):
        load_dataset("cifar10", data_dir=fake_cifar10, verify=False)


def test_default_data_dir_from_env(fake_cifar10, monkeypatch):
    monkeypatch.setenv(D.DATA_DIR_ENV, str(fake_cifar10))
    assert D.default_data_dir() == fake_cifar10
    with pytest.warns(ChecksumNotVerifiedWarning):
        ds = load_dataset("cifar10", verify=False)
    assert len(ds.y_test) == 50
    monkeypatch.delenv(D.DATA_DIR_ENV)
    assert str(D.default_data_dir()).endswith(os.path.join(".cache", "gp-activations", "data"))


def test_download_not_attempted_when_files_present(fake_cifar10, monkeypatch):
    import torchvision.datasets.cifar as tvc

    def no_download(*a, **k):
        raise AssertionError("download attempted")

    monkeypatch.setattr(tvc, "download_and_extract_archive", no_download)
    with pytest.warns(ChecksumNotVerifiedWarning):
        ds = load_dataset("cifar10", data_dir=fake_cifar10, verify=False, download=True)
    assert len(ds.y_train) == 180


def test_failed_download_is_user_error(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tvc

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tvc, "download_and_extract_archive", offline)
    with pytest.raises(UserError) as exc:
        load_dataset("cifar100", data_dir=tmp_path / "d", download=True)
    msg = str(exc.value)
    assert "\n" not in msg and "download" in msg and str(tmp_path / "d") in msg


def test_unreadable_files_are_user_error(tmp_path):
    root = write_fake_cifar(tmp_path, "cifar10", n_train=20, n_test=10)
    (root / "cifar-10-batches-py" / "data_batch_2").write_bytes(b"not a pickle")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ChecksumNotVerifiedWarning)
        with pytest.raises(UserError, match="corrupt"):
            load_dataset("cifar10", data_dir=root, verify=False)


def test_out_of_range_labels_are_user_error(tmp_path):
    root = write_fake_cifar(tmp_path, "cifar10", n_train=20, n_test=10)
    path = root / "cifar-10-batches-py" / "test_batch"
    with open(path, "rb") as f:
        batch = pickle.load(f)
    batch["labels"][0] = 12
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ChecksumNotVerifiedWarning)
        with pytest.raises(UserError, match="labels"):
            load_dataset("cifar10", data_dir=root, verify=False)


def test_cifar_full_size_split():
    """With 50,000 training images the validation split is exactly 5,000."""
    assert D.CIFAR_VAL == 5000
    tr, va = D._split_indices(50_000, D.CIFAR_VAL, 0)
    assert len(tr) == 45_000 and len(va) == 5_000
    assert len(np.intersect1d(tr, va)) == 0 and np.all(np.diff(tr) > 0)


# ----------------------------------------------------------------- augmentation


def _oracle(x, dy, dx, flip, pad):
    """Slow per-sample reference: zero-pad, crop at (dy, dx), then maybe flip."""
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    h, w = x.shape[-2:]
    for i in range(x.shape[0]):
        p = F.pad(x[i], (pad, pad, pad, pad))
        crop = p[:, int(dy[i]):int(dy[i]) + h, int(dx[i]):int(dx[i]) + w]
        out[i] = crop.flip(-1) if bool(flip[i]) else crop
    return out


def _batch(n=16, c=3, h=8, w=10, dtype=torch.float32):
    return (torch.arange(n * c * h * w, dtype=torch.float32) + 1).reshape(n, c, h, w).to(dtype)


@pytest.mark.parametrize("pad", [4, 2, 0])
def test_augment_matches_oracle(pad):
    x = _batch()
    out = augment_crop_flip(x, generator=torch.Generator().manual_seed(7), pad=pad)
    dy, dx, flip = crop_flip_params(len(x), pad, torch.Generator().manual_seed(7))
    assert out.shape == x.shape and out.dtype == x.dtype
    torch.testing.assert_close(out, _oracle(x, dy, dx, flip, pad), rtol=0, atol=0)


def test_augment_deterministic_and_random():
    x = _batch(n=64)
    a = augment_crop_flip(x, torch.Generator().manual_seed(1))
    b = augment_crop_flip(x, torch.Generator().manual_seed(1))
    c = augment_crop_flip(x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    dy, dx, flip = crop_flip_params(64, 4, torch.Generator().manual_seed(1))
    assert 0 < int(flip.sum()) < 64  # some flipped, some not
    assert len(torch.unique(dy)) > 3 and len(torch.unique(dx)) > 3
    assert int(dy.min()) >= 0 and int(dx.max()) <= 8
    assert not torch.equal(a, x)
    augment_crop_flip(x)  # default generator works too


def test_augment_known_shifts_and_flip():
    x = _batch(n=4, c=2, h=6, w=6)
    pad = 2
    dy = torch.tensor([pad, pad, 0, pad])
    dx = torch.tensor([pad, pad, pad, 0])
    flip = torch.tensor([False, True, False, False])
    out = apply_crop_flip(x, dy, dx, flip, pad)
    assert torch.equal(out[0], x[0])  # centre crop, no flip: identity
    assert torch.equal(out[1], x[1].flip(-1))  # centre crop + flip: mirror
    # dy = 0: image moved down by `pad`, zero rows on top
    assert torch.equal(out[2, :, pad:], x[2, :, :-pad]) and out[2, :, :pad].eq(0).all()
    # dx = 0: image moved right by `pad`, zero columns on the left
    assert torch.equal(out[3, :, :, pad:], x[3, :, :, :-pad]) and out[3, :, :, :pad].eq(0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_augment_channels_last(dtype):
    x = _batch(n=8, c=3, h=8, w=8, dtype=dtype)
    xc = x.contiguous(memory_format=torch.channels_last)
    out = augment_crop_flip(xc, torch.Generator().manual_seed(3))
    assert out.shape == x.shape and out.dtype == dtype
    assert out.is_contiguous(memory_format=torch.channels_last)
    ref = augment_crop_flip(x, torch.Generator().manual_seed(3))
    assert ref.is_contiguous()
    assert torch.equal(out, ref)
    dy, dx, flip = crop_flip_params(8, 4, torch.Generator().manual_seed(3))
    assert torch.equal(out, _oracle(x, dy, dx, flip, 4))


def test_augment_rejects_bad_input():
    with pytest.raises(ValueError):
        augment_crop_flip(torch.zeros(2, 1, 40))
    with pytest.raises(ValueError):
        augment_crop_flip(torch.zeros(2, 3, 8, 8), pad=-1)
    assert augment_crop_flip(torch.zeros(0, 3, 8, 8)).shape == (0, 3, 8, 8)


def test_augment_on_loaded_cifar(fake_cifar10):
    with pytest.warns(ChecksumNotVerifiedWarning):
        ds = load_dataset("cifar10", data_dir=fake_cifar10, verify=False)
    idx = torch.randperm(len(ds.y_train), generator=torch.Generator().manual_seed(0))[:32]
    out = augment_crop_flip(ds.x_train[idx], torch.Generator().manual_seed(0))
    assert out.shape == (32, 3, 32, 32) and out.dtype == torch.float32


def test_mnist1d_is_generated_once_then_read_from_an_npz(tmp_path, monkeypatch):
    from gp_activations import data as data_mod

    monkeypatch.setenv("GP_ACTIVATIONS_DATA", str(tmp_path))
    data_mod._mnist1d_arrays.cache_clear()
    try:
        generated = data_mod._mnist1d_arrays()
        (cache,) = tmp_path.glob("mnist1d-10000-42-*.npz")
        data_mod._mnist1d_arrays.cache_clear()
        read = data_mod._mnist1d_arrays()
        assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(generated, read))
        cache.write_bytes(b"not an npz")  # a damaged cache is regenerated, not trusted
        data_mod._mnist1d_arrays.cache_clear()
        again = data_mod._mnist1d_arrays()
        assert all(np.array_equal(a, b) for a, b in zip(generated, again))
        assert np.load(cache, allow_pickle=False)["x"].shape == (8000, 40)
    finally:
        data_mod._mnist1d_arrays.cache_clear()


def test_mnist1d_hard_is_noisier_with_a_larger_test_set():
    from gp_activations.data import describe_test_split, get_dataset_info, load_dataset

    hard, plain = load_dataset("mnist1d_hard"), load_dataset("mnist1d")
    assert (len(hard.y_train), len(hard.y_val), len(hard.y_test)) == (7000, 1000, 4000)
    assert hard.input_shape == plain.input_shape == (1, 40) and hard.num_classes == 10
    assert get_dataset_info("mnist1d_hard").default_model == "resnet1d"
    assert not torch.equal(hard.x_test[:100], plain.x_test[:100])
    assert "4,000" in describe_test_split("mnist1d_hard") and "4,000" in hard.test_source
    assert torch.equal(load_dataset("mnist1d_hard", seed=1).x_test, hard.x_test)
