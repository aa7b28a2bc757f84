"""Bring your own task: search activation functions for your model and your data.

The search needs two things from you, both plain Python:

* a **model factory** -- a callable taking an *activation factory* (and optionally
  ``num_classes``) and returning an ``nn.Module``.  Call ``act(num_channels=C)`` once per
  activation site, so that each site gets its own module (and its own learnable scalars);
* **data** -- tensors ``(x_train, y_train, x_val, y_val[, x_test, y_test])``, a dict with those
  keys, torchvision-style datasets, or a function returning any of these.

Or, instead of both, a whole ``fitness(activation, seed) -> float`` callable.

Here: a two-spirals classification problem (scikit-learn-free, generated with torch) and a
small MLP.  Run it from the repository root, either from Python::

    python experiments/custom_task.py

or from the command line with the TOML file next to this one, which points at the same two
functions as ``experiments/custom_task.py:make_model`` / ``:load_data``::

    gp-activations search --config experiments/custom_task.toml --out runs/spirals
"""

import math

import torch
from torch import nn


def load_data(n: int = 3000, noise: float = 0.25, seed: int = 0):
    """Two interleaved spirals in the plane, split 70/15/15 into train/val/test."""
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=g) * 3 * math.pi + 0.5
    label = torch.randint(0, 2, (n,), generator=g)
    sign = 1 - 2 * label.float()
    x = torch.stack([sign * t * torch.cos(t), sign * t * torch.sin(t)], dim=1) / 5
    x = x + noise * torch.randn(n, 2, generator=g)
    a, b = int(0.7 * n), int(0.85 * n)
    return x[:a], label[:a], x[a:b], label[a:b], x[b:], label[b:]


def make_model(act, num_classes: int = 2) -> nn.Module:
    """A 3-layer MLP; ``act(num_channels=...)`` makes one activation module per site."""
    return nn.Sequential(
        nn.Linear(2, 64), act(num_channels=64),
        nn.Linear(64, 64), act(num_channels=64),
        nn.Linear(64, num_classes),
    )


if __name__ == "__main__":  # spawned worker processes import this file: keep the search here
    from gp_activations.search import SearchConfig, run_search

    config = SearchConfig(dataset="spirals", primitives="minimal", population=8, generations=3,
                          param_variants=1, train={"epochs": 20, "batch_size": 128, "lr": 1e-2},
                          executor="serial")
    result = run_search(config, out="runs/spirals-python", model=make_model, data=load_data)
    print(result.table())
