"""The search's random number generators, owned by the driver.

Three streams, seeded from the config's ``seed`` when a run starts, saved (as JSON, never
pickled) with every generation the driver creates, and restored before the next one is made --
so a resumed run draws exactly what the uninterrupted run would have:

* Python's global ``random``: DEAP's tree operators and the built-in strategies draw from it
  (DEAP offers no other), and so do the variant placement and the surrogate's choice;
* numpy's global generator (``np.random.random()`` and friends, for plug-in code that uses it);
* :attr:`RandomStreams.numpy`, a ``numpy.random.Generator`` handed to strategies as
  ``Strategy.numpy_rng`` -- the one to use in new code.

Runs made before numpy's streams were saved stored Python's state only: they resume on the
same Python stream (all that the built-in strategies use), and numpy's streams are seeded from
the run's seed and the generation, as a fresh run would never see.
"""

from __future__ import annotations

import contextlib
import json
import random

import numpy as np


class RandomStreams:
    def __init__(self, seed: int = 0):
        self.numpy = np.random.Generator(np.random.PCG64(seed))
        self.seed(seed)

    def seed(self, seed: int) -> None:
        """Every stream from ``seed`` (a run's start)."""
        random.seed(seed)
        np.random.seed(seed % 2 ** 32)
        self.numpy.bit_generator.state = np.random.PCG64(seed).state

    def to_json(self) -> str:
        name, keys, pos, has_gauss, cached = np.random.get_state()
        return json.dumps({"python": random.getstate(),
                           "numpy_global": [name, keys.tolist(), pos, has_gauss, cached],
                           "numpy": self.numpy.bit_generator.state})

    def restore(self, text: str, seed: int = 0, generation: int = 0) -> None:
        """The streams as :meth:`to_json` saved them (or as an older run saved Python's)."""
        state = json.loads(text)
        if isinstance(state, list):  # a run made before numpy's streams were saved
            version, internal, gauss = state
            random.setstate((version, tuple(internal), gauss))
            mixed = np.random.SeedSequence([seed, generation]).generate_state(1)[0]
            np.random.seed(int(mixed))
            self.numpy.bit_generator.state = np.random.PCG64(int(mixed)).state
            return
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        name, keys, pos, has_gauss, cached = state["numpy_global"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        self.numpy.bit_generator.state = state["numpy"]


@contextlib.contextmanager
def untouched():
    """Run code that is not the strategy's (screening, the surrogate's fit and prediction) with
    the global streams left as they were: only the strategy draws from them.

    Libraries may draw from the global ``random`` where no one expects it -- importing
    ``sklearn.ensemble`` does (measured: the state moves) -- and an import happens once per
    process, so the first halving + surrogate search in a process bred other children than an
    identical second one (dedup hits 147 vs 122), and a run extended with ``--resume
    --generations`` differed from a straight one.
    """
    python, numpy_global = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        random.setstate(python)
        np.random.set_state(numpy_global)
