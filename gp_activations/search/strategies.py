"""Search strategies as ask/tell policies, in the style of Optuna's samplers.

A strategy decides *what* to train; the driver (``driver.py``) decides nothing -- it runs the
resumable create -> evaluate -> finish state machine and stores everything.  Per generation:

* ``ask(history)`` yields :class:`Proposal` s lazily; the driver screens each one and stops
  pulling once it has the generation's number of new trainable functions (a strategy never
  needs to know how many were accepted);
* ``tell(history, scored, offspring)`` is told the generation's results and returns the next
  population, best first.

Both see only completed generations (:class:`History`), and draw randomness from Python's
global ``random`` (as DEAP does), numpy's global generator or -- best for new code --
``self.numpy_rng`` (a ``numpy.random.Generator``): the driver seeds all three, saves them with
every generation and restores them on resume (``randomness.py``) -- so a strategy is
deterministic for a seed, whatever the executor, the order in which results arrive or an
interruption.

Plug in your own with ``strategy = "my_module:MyStrategy"`` (or ``"file.py:MyStrategy"``): a
subclass of :class:`Strategy`, built as ``MyStrategy(toolbox, config)``::

    from gp_activations.search.strategies import Proposal, Strategy
    from gp_activations.search.evolution import mutate

    class HillClimb(Strategy):
        '''Mutate the best function only.'''
        def ask(self, history):
            if not history.population:
                yield from self.initial(history)
                return
            best = history.population[0]
            while True:
                child, name = mutate(self.toolbox, best.tree)
                yield Proposal(child, "mutation", name, (best.function_id,))
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

import numpy as np
from deap import gp

from .. import zoo
from ..errors import UserError, did_you_mean
from .evolution import crossover, mutate, select_softmax, select_tournament


@dataclass(frozen=True)
class Proposal:
    """One function a strategy wants trained."""

    tree: gp.PrimitiveTree
    origin: str  # "zoo:relu", "seed", "random", "mutation", "crossover", ...
    mutation: Optional[str] = None
    parents: tuple = ()
    keep_duplicate: bool = False  # stored (as a duplicate) even if functionally seen before


@dataclass(frozen=True)
class Member:
    """A survivor of the previous generation."""

    function_id: int
    tree: gp.PrimitiveTree
    fitness: float


@dataclass(frozen=True)
class History:
    """What a strategy may know: the generation being made, the previous survivors (best
    first) and every finished candidate so far (``store.Candidate`` records)."""

    generation: int
    population: tuple = ()
    finished: tuple = field(default=(), repr=False)


class Strategy:
    """Base class: the paper's initial population and plain truncation survival."""

    name = "base"
    #: A numpy Generator owned by the driver (seeded, saved, restored with each generation).
    numpy_rng: Optional[np.random.Generator] = None

    def __init__(self, toolbox, config):
        self.toolbox = toolbox
        self.config = config

    # -- ask ------------------------------------------------------------------------------------
    def ask(self, history: History) -> Iterator[Proposal]:  # pragma: no cover - abstract
        raise NotImplementedError

    def initial(self, history: History) -> Iterator[Proposal]:
        """Generation 0: ReLU (always, the reference), the zoo's plain functions (``init_zoo``),
        the config's ``init_expressions``, then random trees of the paper's initial shapes."""
        from ..activation import Activation

        cfg, pset = self.config, self.toolbox.pset
        seeds = []
        for name in (zoo.names() if cfg.init_zoo else ["relu"]):
            entry = zoo.entry(name)
            if not entry.params:  # parametric zoo entries are variants of plain ones
                seeds.append((entry.expression, f"zoo:{name}"))
        seeds += [(text, "seed") for text in cfg.init_expressions]
        for text, origin in seeds:
            try:
                tree = Activation.from_string(text, pset).tree
            except UserError:
                if origin.startswith("zoo:") and pset.name != "pangaea":
                    continue  # the zoo is written over pangaea; skip what this space can't express
                raise
            yield Proposal(tree, origin, keep_duplicate=True)
        while True:
            yield Proposal(self.toolbox.init_tree(), "random")

    # -- tell -----------------------------------------------------------------------------------
    def tell(self, history: History, scored: dict, offspring: Sequence[int]) -> list:
        """The next population (function ids, best first) from ``scored`` ({function id:
        fitness} of the previous survivors and the new ``offspring``)."""
        return sorted(scored, key=lambda f: (-scored[f], f))[:self.config.population]


class RandomStrategy(Strategy):
    """Random search: new random trees of the sizes evolution reaches, no selection."""

    name = "random"

    def ask(self, history):
        if history.generation == 0:
            yield from self.initial(history)
            return
        while True:
            tree = self.toolbox.init_tree()
            for _ in range(random.randint(0, 3)):
                tree, _name = mutate(self.toolbox, tree)
            yield Proposal(tree, "random")


class EvolutionStrategy(Strategy):
    """PANGAEA's evolution: softmax (or tournament) selection of parents, one mutation each
    (or one-point crossover with probability ``crossover``), elitist generational survival."""

    name = "evolution"

    def _select(self, fits, k: int) -> list:
        if self.config.selection == "tournament":
            return select_tournament(fits, k, self.config.tournament_size)
        return select_softmax(fits, k, self.config.temperature)

    def ask(self, history):
        cfg = self.config
        if history.generation == 0 or not history.population:
            yield from (self.initial(history) if history.generation == 0
                        else RandomStrategy.ask(self, history))
            return
        members = history.population
        fits = [m.fitness for m in members]
        while True:
            if cfg.crossover and len(members) > 1 and random.random() < cfg.crossover:
                i, j = self._select(fits, 2)
                for _ in range(5):  # two different parents, or crossover only copies one
                    if i != j:
                        break
                    (j,) = self._select(fits, 1)
                a, b = members[i], members[j]
                yield Proposal(crossover(self.toolbox, a.tree, b.tree), "crossover", "crossover",
                               (a.function_id, b.function_id))
            else:
                (i,) = self._select(fits, 1)
                child, name = mutate(self.toolbox, members[i].tree)
                yield Proposal(child, "mutation", name, (members[i].function_id,))

    def tell(self, history, scored, offspring):
        cfg = self.config
        old = [m.function_id for m in history.population if m.function_id in scored]
        if history.generation == 0 or cfg.elitism >= cfg.population:
            return super().tell(history, scored, offspring)
        ranked = sorted(scored, key=lambda f: (-scored[f], f))
        # generational replacement with elitism: the best parents plus the best offspring
        elite = sorted(old, key=lambda f: (-scored[f], f))[:cfg.elitism]
        rest = [f for f in ranked if f not in elite and f in offspring]
        rest += [f for f in ranked if f not in elite and f not in rest]
        survivors = elite + rest[:cfg.population - len(elite)]
        return sorted(survivors, key=lambda f: (-scored[f], f))


STRATEGIES = {"evolution": EvolutionStrategy, "random": RandomStrategy}


def check_strategy_name(name: str) -> None:
    """A built-in name or a ``module:Class`` reference (resolved when the search starts)."""
    if name not in STRATEGIES and ":" not in name:
        raise UserError(f"config: 'strategy' must be one of {', '.join(STRATEGIES)} or a "
                        f"'module:Class' reference, got {name!r}{did_you_mean(name, STRATEGIES)}")


def make_strategy(name: str, toolbox, config) -> Strategy:
    check_strategy_name(name)
    if name in STRATEGIES:
        return STRATEGIES[name](toolbox, config)
    from ..references import resolve_reference

    cls = resolve_reference(name)
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise UserError(f"strategy {name!r} is not a subclass of "
                        f"gp_activations.search.strategies.Strategy")
    try:
        return cls(toolbox, config)
    except Exception as exc:  # noqa: BLE001 -- a user's class: one line, not a traceback
        raise UserError(f"strategy {name!r} could not be built as {cls.__name__}(toolbox, "
                        f"config): {type(exc).__name__}: {exc}") from None
