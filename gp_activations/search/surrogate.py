"""Surrogate pre-screening: predict a function's fitness before training it.

Features are computed without training, in the driver, deterministically:

* **probe features** -- the function's values and slopes on a fixed grid of [-4, 4] (33
  points, each squashed as ``sign(v)·log(1 + |v|)``), the same kind of probe the fingerprint
  uses;
* **network features** -- the task's network at initialisation (fixed seed) on one fixed
  batch of the task's training data: the log RMS of every activation site's output (mean,
  min, max, last), the log of the gradient norm and the loss at initialisation.  This is the
  cheap cousin of AQuaSurF's Fisher-spectrum features: how the function propagates signal
  and gradient through *this* network.

A scikit-learn regressor (``"forest"``: a random forest; ``"ridge"``: ridge regression on
standardised features) is fitted on the finished plain functions of the run -- a failed
training counts as the worst fitness seen -- and each generation trains the predicted best
``(1 - explore)`` share of the proposals plus an ``explore`` share drawn at random from the
rest (so that the surrogate's blind spots still get data).  The predictions are stored next
to the measured fitness (``candidates.predicted``).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

SURROGATES = ("forest", "ridge")
_GRID = torch.arange(-16, 17, dtype=torch.float32) / 4  # 33 points on [-4, 4]
_CLIP = 20.0


def _squash(v: np.ndarray) -> np.ndarray:
    v = np.nan_to_num(v.astype(np.float64), nan=0.0, posinf=1e9, neginf=-1e9)
    return np.clip(np.sign(v) * np.log1p(np.abs(v)), -_CLIP, _CLIP)


def probe_features(act) -> np.ndarray:
    """Values and slopes of ``act`` on the probe grid, squashed (66 numbers)."""
    x = _GRID.clone().requires_grad_(True)
    try:
        y = act(x)
        (g,) = torch.autograd.grad(y.sum(), x, allow_unused=True)
        g = torch.zeros_like(x) if g is None else g
        return np.concatenate([_squash(y.detach().numpy()), _squash(g.detach().numpy())])
    except Exception:  # noqa: BLE001 -- an operator that fails here fails in training too
        return np.full(2 * len(_GRID), _CLIP)


class NetworkProbe:
    """The task's network at initialisation on one fixed batch: signal and gradient statistics."""

    def __init__(self, dataset: str, model: Optional[str], batch: int = 64, data_dir=None,
                 verify: bool = True):
        from ..train import get_dataset

        self.ds = get_dataset(dataset, torch.device("cpu"), data_dir=data_dir, verify=verify)
        self.model = model
        self.x, self.y = self.ds.x_train[:batch], self.ds.y_train[:batch]

    def features(self, act) -> np.ndarray:
        from ..models import activation_sites
        from ..train import build_network

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.random.fork_rng():
                torch.manual_seed(0)
                net = build_network(self.model, act.factory(), self.ds)
            rms = []
            hooks = [m.register_forward_hook(lambda _m, _i, out: rms.append(
                float(out.detach().pow(2).mean().sqrt()))) for _n, m in activation_sites(net)]
            out = net.train()(self.x)
            loss = torch.nn.functional.cross_entropy(out, self.y)
            grads = torch.autograd.grad(loss, [p for p in net.parameters() if p.requires_grad],
                                        allow_unused=True)
            gnorm = math.sqrt(sum(float(g.pow(2).sum()) for g in grads if g is not None))
            loss = float(loss.detach())
            for h in hooks:
                h.remove()
            logs = np.log10(np.clip(np.nan_to_num(np.array(rms or [1.0]), nan=1e9), 1e-9, 1e9))
            values = [logs.mean(), logs.min(), logs.max(), logs[-1],
                      math.log10(min(max(gnorm, 1e-9), 1e9)) if math.isfinite(gnorm) else 9.0,
                      min(loss, 50.0) if math.isfinite(loss) else 50.0]
            return np.nan_to_num(np.array(values, dtype=np.float64), nan=9.0)
        except Exception:  # noqa: BLE001
            return np.array([9.0, 9.0, 9.0, 9.0, 9.0, 50.0])
        finally:
            torch.set_num_threads(threads)


class Surrogate:
    """Features of activations, a regressor fitted on finished ones, predictions for new ones."""

    def __init__(self, kind: str = "forest", network: Optional[NetworkProbe] = None, seed: int = 0):
        if kind not in SURROGATES:
            raise ValueError(kind)
        self.kind, self.network, self.seed = kind, network, seed
        self._cache: dict = {}
        self.model = None
        self.n_fitted = 0

    def features(self, act, key: Optional[str] = None) -> np.ndarray:
        key = key or act.expression
        if key not in self._cache:
            parts = [probe_features(act)]
            if self.network is not None:
                parts.append(self.network.features(act))
            self._cache[key] = np.concatenate(parts)
        return self._cache[key]

    def fit(self, acts: list, fitness: list, keys: Optional[list] = None) -> "Surrogate":
        """Fit on ``acts`` and their fitness (None: a failed training, scored as the worst)."""
        known = [f for f in fitness if f is not None]
        floor = min(known) if known else 0.0
        y = np.array([floor if f is None else f for f in fitness], dtype=np.float64)
        X = np.stack([self.features(a, k) for a, k in zip(acts, keys or [None] * len(acts))])
        if self.kind == "forest":
            from sklearn.ensemble import RandomForestRegressor

            self.model = RandomForestRegressor(n_estimators=100, min_samples_leaf=2,
                                               random_state=self.seed, n_jobs=1)
        else:
            from sklearn.linear_model import RidgeCV
            from sklearn.pipeline import make_pipeline
            from sklearn.preprocessing import StandardScaler

            self.model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 3, 12)))
        self.model.fit(X, y)
        self.n_fitted = len(y)
        return self

    def predict(self, acts: list, keys: Optional[list] = None) -> np.ndarray:
        X = np.stack([self.features(a, k) for a, k in zip(acts, keys or [None] * len(acts))])
        return self.model.predict(X)


def choose(predictions, wanted: int, explore: float, rng) -> list[int]:
    """Indices to train: the ``wanted - round(explore·wanted)`` best predicted, then the
    exploration share drawn with ``rng`` (``random``-like) from the rest; in index order."""
    order = sorted(range(len(predictions)), key=lambda i: (-predictions[i], i))
    n_explore = int(round(explore * wanted))
    best = set(order[:max(0, wanted - n_explore)])
    rest = [i for i in range(len(predictions)) if i not in best]
    return sorted(best | set(rng.sample(rest, min(n_explore, len(rest)))))


def spearman(a, b) -> Optional[float]:
    """Spearman's rank correlation of two equal-length sequences (None if < 3 pairs)."""
    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
    if len(pairs) < 3:
        return None
    from scipy.stats import spearmanr

    value = spearmanr([p[0] for p in pairs], [p[1] for p in pairs]).statistic
    return None if value is None or not math.isfinite(value) else float(value)
