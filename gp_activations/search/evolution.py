"""PANGAEA's evolutionary operators on DEAP trees: generators, mutators, selection.

Written in the style of ``deap.gp``: small functions that each do one thing and plug into a
``deap.base.Toolbox``.  Mutators take a ``PrimitiveTree`` (and the primitive set), mutate it
in place and return a one-tuple, exactly like DEAP's.  All randomness comes from Python's
global ``random`` module -- as in DEAP -- whose state the search saves (as JSON, never pickled)
at every generation so that a resumed run continues identically.

* insert     -- a new operator on a random edge, the old subtree as one of its children
                (``deap.gp.mutInsert``);
* remove     -- an operator removed, one of its children kept (``deap.gp.mutShrink``);
* change     -- one operator swapped for another of the same arity (:func:`mut_change`);
* regenerate -- every operator redrawn, the shape kept (:func:`mut_regenerate`);
* subtree    -- a random subtree regrown (``deap.gp.mutUniform``), off by default.
"""

from __future__ import annotations

import math
import operator
import random
from functools import partial
from typing import Sequence

from deap import base, gp

from ..errors import UserError

#: The initial shapes of the paper: u(u(x)), b(u(x), u(x)), u(b(u(x), u(x))).
SHAPES = ("u(u(x))", "b(u(x),u(x))", "u(b(u(x),u(x)))")
MUTATIONS = ("insert", "remove", "change", "regenerate", "subtree")


def _require_arities(pset, shapes: Sequence[str]) -> None:
    needs_unary = any("u(" in s for s in shapes)
    needs_binary = any("b(" in s for s in shapes)
    if needs_unary and not pset.unary:
        raise UserError(f"search space {pset.name!r} has no unary operators, but the initial "
                        f"shapes {', '.join(shapes)} need them")
    if needs_binary and not pset.binary:
        raise UserError(f"search space {pset.name!r} has no binary operators, but the initial "
                        f"shapes {', '.join(shapes)} need them")


def gen_shape(pset, shape: str) -> gp.PrimitiveTree:
    """A random tree of ``shape`` (e.g. ``"b(u(x),u(x))"``): each u/b a random operator."""
    nodes = []
    for token in shape.replace("(", " ").replace(")", " ").replace(",", " ").split():
        if token == "u":
            nodes.append(pset.mapping[random.choice(pset.unary)])
        elif token == "b":
            nodes.append(pset.mapping[random.choice(pset.binary)])
        elif token == "x":
            nodes.append(pset.mapping["x"])
        else:  # pragma: no cover - SHAPES are ours
            raise ValueError(f"bad shape token {token!r}")
    return gp.PrimitiveTree(nodes)


def gen_initial(pset, shapes: Sequence[str] = SHAPES) -> gp.PrimitiveTree:
    """A random tree of one of the paper's initial shapes."""
    return gen_shape(pset, random.choice(list(shapes)))


def mut_change(individual, pset):
    """Swap one operator (root included) for another of the same arity."""
    prims = [i for i, node in enumerate(individual) if isinstance(node, gp.Primitive)]
    if not prims:
        return individual,
    index = random.choice(prims)
    node = individual[index]
    others = [p for p in pset.primitives[node.ret] if p.arity == node.arity and p.name != node.name]
    if others:
        individual[index] = random.choice(others)
    return individual,


def mut_regenerate(individual, pset):
    """Redraw every operator with a random one of the same arity; the shape is kept."""
    for index, node in enumerate(individual):
        if isinstance(node, gp.Primitive):
            same = [p for p in pset.primitives[node.ret] if p.arity == node.arity]
            individual[index] = random.choice(same)
    return individual,


def mut_remove(individual):
    """Remove an operator, keeping one of its children (``mutShrink``; the root may go too)."""
    if len(individual) > 1 and isinstance(individual[0], gp.Primitive) and (
            len(individual) < 3 or individual.height <= 1 or random.random() < 1 / len(individual)):
        # mutShrink never removes the root; do it here with the probability of any one node.
        kids_start, arg = 1, random.randrange(individual[0].arity)
        for _ in range(arg):
            kids_start = individual.searchSubtree(kids_start).stop
        individual[0:len(individual)] = individual[individual.searchSubtree(kids_start)]
        return individual,
    return gp.mutShrink(individual)


def select_softmax(fitnesses: Sequence[float], k: int, temperature: float) -> list[int]:
    """Indices drawn with probability ∝ exp(fitness / temperature) (PANGAEA's selection)."""
    if temperature <= 0:
        raise UserError(f"selection temperature must be positive, got {temperature}")
    top = max(fitnesses)
    weights = [math.exp((f - top) / temperature) for f in fitnesses]
    return random.choices(range(len(fitnesses)), weights=weights, k=k)


def select_tournament(fitnesses: Sequence[float], k: int, size: int) -> list[int]:
    """Indices of the winners of ``k`` tournaments of ``size`` random entrants."""
    chosen = []
    for _ in range(k):
        entrants = [random.randrange(len(fitnesses)) for _ in range(max(1, size))]
        chosen.append(max(entrants, key=lambda i: fitnesses[i]))
    return chosen


def make_toolbox(pset, *, max_height: int = 6, max_size: int = 24,
                 weights: dict | None = None, shapes: Sequence[str] = SHAPES) -> base.Toolbox:
    """A DEAP toolbox with the generators and (size/height-limited) mutators registered."""
    _require_arities(pset, shapes)
    toolbox = base.Toolbox()
    toolbox.pset = pset
    toolbox.register("init_tree", gen_initial, pset, shapes)
    toolbox.register("random_tree", gp.genGrow, pset, min_=1, max_=3)
    toolbox.register("insert", gp.mutInsert, pset=pset)
    toolbox.register("remove", mut_remove)
    toolbox.register("change", mut_change, pset=pset)
    toolbox.register("regenerate", mut_regenerate, pset=pset)
    # mutUniform calls expr(pset=pset, type_=...): the pset must not be bound here as well
    toolbox.register("subtree", gp.mutUniform, expr=partial(gp.genGrow, min_=0, max_=2), pset=pset)
    toolbox.register("mate", gp.cxOnePoint)
    for name in (*MUTATIONS, "mate"):
        toolbox.decorate(name, gp.staticLimit(key=operator.attrgetter("height"), max_value=max_height))
        toolbox.decorate(name, gp.staticLimit(key=len, max_value=max_size))
    weights = dict(weights or {})
    toolbox.mutation_names = [m for m in MUTATIONS if weights.get(m, 1.0 if m != "subtree" else 0.0) > 0]
    toolbox.mutation_weights = [weights.get(m, 1.0 if m != "subtree" else 0.0)
                                for m in toolbox.mutation_names]
    return toolbox


def mutate(toolbox, tree: gp.PrimitiveTree) -> tuple[gp.PrimitiveTree, str]:
    """One random mutation of a copy of ``tree``; returns (child, mutation name)."""
    name = random.choices(toolbox.mutation_names, weights=toolbox.mutation_weights, k=1)[0]
    child = gp.PrimitiveTree(list(tree))
    (child,) = getattr(toolbox, name)(child)
    return gp.PrimitiveTree(list(child)), name


def crossover(toolbox, a: gp.PrimitiveTree, b: gp.PrimitiveTree) -> gp.PrimitiveTree:
    """One-point crossover of copies of ``a`` and ``b``; returns the first child."""
    child_a, child_b = gp.PrimitiveTree(list(a)), gp.PrimitiveTree(list(b))
    if len(child_a) < 2 or len(child_b) < 2:
        return child_a
    child_a, _ = toolbox.mate(child_a, child_b)
    return gp.PrimitiveTree(list(child_a))


def choose_param_edges(tree: gp.PrimitiveTree, max_params: int) -> tuple[int, ...]:
    """Random nodes whose output edge gets a learnable multiplier (1..max_params of them)."""
    count = random.randint(1, max(1, min(max_params, len(tree))))
    return tuple(sorted(random.sample(range(len(tree)), count)))
