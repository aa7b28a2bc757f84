"""A run's discovered functions, ranked -- with what a reader must know about each.

Two things are flagged instead of being reported as discoveries:

* an **affine** function (``x``, ``2x + 1``): the network becomes linear; by default it is not
  ranked as a discovered activation at all (``allow_linear = true`` in the config ranks it,
  still flagged);
* a function **equal to a baseline** (``mul(x, sigmoid(x))`` is SiLU): ranked, marked
  ``= silu``, and the final evaluation trains it once, as the baseline.

The search table, ``evaluate``, ``report`` and ``export`` all rank through
:func:`ranked_functions`, so they agree on what "rank 1" is.
"""

from __future__ import annotations

from typing import Optional

from ..activation import Activation
from .screening import equal_baseline, is_affine
from .store import RunStore


def describe(item: dict) -> dict:
    """``item`` (a :meth:`RunStore.top_functions` entry) with ``activation``, ``linear`` and
    ``equals`` (a zoo name or None) added."""
    cand = item["candidate"]
    act = Activation.from_string(cand.expression, cand.primitives, cand.params)
    return {**item, "activation": act, "linear": is_affine(act), "equals": equal_baseline(act)}


def ranked_functions(store: RunStore, k: Optional[int] = None, mode: str = "best",
                     allow_linear: bool = False,
                     race: bool = False) -> tuple[list[dict], list[dict]]:
    """``(ranked, skipped)``: the top ``k`` functions (all when ``k`` is None), each described,
    and the affine functions that were better than the last one ranked but left out (empty
    when ``allow_linear``).

    ``race``: after a finished final race, the found functions that raced come first, in the
    race's order (those still in it, then those it dropped; each by its mean over the race's
    seeds; then those its screen left out, by their screen accuracy), the rest by fitness -- what the search's table, ``evaluate``, ``transfer``,
    ``report`` and ``export`` rank: the search's winner is the race's, not the best of many
    noisy fitness values.  A race whose entrants are no longer the top by fitness (the search
    went on after it) is ignored."""
    order = race_order(store) if race else {}
    if order:
        limit = None if k is None else max(k, len(order))
        ranked, skipped = ranked_functions(store, limit, mode, allow_linear)
        if {item["candidate"].id for item in ranked[:len(order)]} == set(order):
            ranked = sorted(ranked, key=lambda item: order.get(item["candidate"].id, (2, 0.0)))
            return ranked[:k] if k is not None else ranked, skipped
        # the search went on after its race (--resume --generations): the raced functions
        # are no longer its top; the fitness order stands until it is raced again
    ranked, skipped = [], []
    for item in store.top_functions(None, mode):
        if k is not None and len(ranked) >= k:
            break
        item = describe(item)
        if item["linear"] and not allow_linear:
            skipped.append(item)
            continue
        ranked.append(item)
    return ranked, skipped


def race_order(store: RunStore) -> dict:
    """``{candidate id: sort key}`` of the found functions of a finished final race (empty
    without one): still in the race before dropped, then the higher mean first; those its
    screen left out after all that raced, by their screen accuracy."""
    race, entrants = store.get_meta("race"), store.get_meta("race_entrants")
    if not race or not entrants:
        return {}
    survivors, screen = set(race["survivors"]), race.get("screen", {})

    def key(label):
        if label not in race["means"]:  # screened out
            return (2, -(screen.get(label) or 0.0))
        return (0 if label in survivors else 1, -race["means"][label])

    return {e["candidate_id"]: key(e["label"])
            for e in entrants if e.get("candidate_id") is not None}


def flag_text(item: dict) -> str:
    """" (= silu)", " (linear)" or "" -- appended to a function's label in tables."""
    parts = []
    if item.get("linear"):
        parts.append("linear: the network becomes affine")
    if item.get("equals") and not _is_that_baseline(item):
        parts.append(f"= {item['equals']}")
    return f"  ({'; '.join(parts)})" if parts else ""


def _is_that_baseline(item: dict) -> bool:
    """The zoo entry itself (``relu(x)`` is ReLU): nothing worth a mark in the search table."""
    from .. import zoo

    act = item.get("activation")
    return act is not None and act == zoo.get(item["equals"])


def skipped_note(skipped: list[dict]) -> str:
    """One line about the affine functions left out of a ranking, or ''."""
    if not skipped:
        return ""
    best = skipped[0]
    return (f"{len(skipped)} affine function(s) not ranked (best: {best['activation']}, fitness "
            f"{best['fitness']:.4f}): a linear network is no activation result; set "
            f"allow_linear = true in the config to rank them")
