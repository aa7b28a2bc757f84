"""Creating a generation: the strategy's proposals screened, deduplicated, (optionally)
filtered by the surrogate, and stored with their parametric variants in one transaction.

:class:`Breeder` keeps the run's deduplication index (functions already seen, by their
behaviour on probe inputs) and writes candidates as ``pending``, ``rejected``, ``failed`` or as
a duplicate of an earlier candidate.  The learnable-scalar variants of each new function are
placed at random edges (:func:`~gp_activations.search.evolution.choose_param_edges`).
"""

from __future__ import annotations

import logging
import math
import random
from typing import Optional

from ..activation import Activation
from .evolution import choose_param_edges
from .plan import SearchPlan
from .randomness import untouched
from .screening import screen
from .store import RunStore, Status
from .strategies import History, Member

log = logging.getLogger("gp_activations.search")


def _label(expression: str, params) -> str:
    params = list(params)
    return f"{expression} @ params {params}" if params else expression


class Breeder:
    """Makes and stores the generations of one run."""

    def __init__(self, plan: SearchPlan, store: RunStore, streams):
        self.plan, self.store, self.streams = plan, store, streams
        self.pset, self.config = plan.pset, plan.config
        self.dedup: dict[str, int] = {}
        self.function_keys: set[str] = set()
        for row in store.candidates(unique=True):
            if row.dedup_key:
                self.dedup.setdefault(row.dedup_key, row.id)
            if row.function_key:
                self.function_keys.add(row.function_key)

    def history(self, generation: int) -> History:
        members = []
        if generation:
            for r in self.store.population(generation - 1):
                cand = self.store.candidate(r.function_id)
                members.append(Member(r.function_id, Activation.from_string(
                    cand.expression, self.pset).tree, r.fitness))
        return History(generation, tuple(members), tuple(self.store.candidates(trained=True)))

    def create(self, generation: int, budget: float) -> int:
        """Screen and store the new functions of ``generation`` (the strategy's proposals, in
        its order) in one transaction; returns how many new functions were stored."""
        cfg = self.config
        wanted = cfg.population if generation == 0 else cfg.n_offspring
        history = self.history(generation)
        items, dedup_hits = self.screened(self.plan.strategy.ask(history), wanted, budget,
                                          history)
        new_functions = made = 0
        with self.store.transaction():
            for proposal, act, result, predicted in items:
                if budget <= 0:
                    break
                fid = self.insert(act, result, generation, proposal.parents, proposal.mutation,
                                  proposal.origin)
                new_functions += 1
                row = self.store.candidate(fid)
                if predicted is not None:
                    self.store.set_predicted(fid, predicted)
                if row.status != Status.PENDING or row.duplicate_of is not None:
                    continue
                budget -= 1
                made += 1
                added, hits = self.add_variants(act, fid, generation, proposal, budget)
                budget -= added
                dedup_hits += hits
            self.store.create_generation(generation, self.streams.to_json())
            self.store.set_meta("dedup_hits", self.store.get_meta("dedup_hits", 0) + dedup_hits)
        log.info("generation %d created: %d new functions (%d to train), %d duplicates skipped",
                 generation, new_functions, made, dedup_hits)
        return new_functions

    def add_variants(self, act: Activation, fid: int, generation: int, proposal,
                     budget: float) -> tuple[int, int]:
        """Store ``act``'s parametric variants; (how many will train, duplicates skipped)."""
        cfg = self.config
        added = hits = 0
        placements: set = set()
        for _ in range(cfg.param_variants * 3):
            if len(placements) >= cfg.param_variants or budget - added <= 0:
                break
            edges = choose_param_edges(act.tree, cfg.max_params)
            if edges in placements:
                continue
            placements.add(edges)
            variant = act.with_params(edges)
            with untouched():
                vres = screen(variant, max_forward_cost=cfg.max_forward_cost)
            if vres.dedup_key in self.dedup:
                hits += 1
                continue
            vid = self.insert(variant, vres, generation, proposal.parents, proposal.mutation,
                              "variant", fid)
            if self.store.candidate(vid).status == Status.PENDING:
                added += 1
        return added, hits

    def screened(self, proposals, wanted: int, budget: float, history: History):
        """([(proposal, activation, screening, predicted)], duplicates skipped): the proposals
        to store, in order.  Pulls proposals until ``wanted`` new trainable functions are in
        (seeds -- ``keep_duplicate`` -- are always taken), at most 50·wanted random attempts.
        With an active surrogate it pulls ``surrogate_pool`` times as many and keeps the
        predicted best plus the exploration share."""
        cfg = self.config
        surrogate = self.fitted_surrogate(history)
        pool = wanted if surrogate is None else int(math.ceil(wanted * cfg.surrogate_pool))
        items, hits, trainable, attempts, keys = [], 0, 0, 0, set()
        for proposal in proposals:
            if not proposal.keep_duplicate:
                if trainable >= min(pool, budget) or attempts >= 50 * pool:
                    break
                attempts += 1
            act = Activation(proposal.tree, self.pset)
            with untouched():
                result = screen(act, max_forward_cost=cfg.max_forward_cost)
            key = result.function_key
            if key and (key in self.function_keys or key in keys) and not proposal.keep_duplicate:
                hits += 1
                continue
            if key:
                keys.add(key)
            new = result.ok and not (result.dedup_key and result.dedup_key in self.dedup)
            trainable += bool(new)
            items.append([proposal, act, result, None, new])
        if surrogate is not None:
            items = self._surrogate_filter(surrogate, items, wanted, history)
        return [tuple(it[:4]) for it in items], hits

    def _surrogate_filter(self, surrogate, items: list, wanted: int, history: History) -> list:
        from .surrogate import choose

        candidates = [it for it in items if it[4] and not it[0].keep_duplicate]
        if not candidates:
            return items
        with untouched():
            predictions = surrogate.predict([it[1] for it in candidates],
                                            [it[2].function_key for it in candidates])
        for it, value in zip(candidates, predictions):
            it[3] = float(value)
        keep = set(choose(list(predictions), min(wanted, len(candidates)),
                          self.config.surrogate_explore, random))
        dropped = {id(it) for i, it in enumerate(candidates) if i not in keep}
        log.info("generation %d: surrogate (fitted on %d) kept %d of %d proposals",
                 history.generation, surrogate.n_fitted, len(keep), len(candidates))
        return [it for it in items if id(it) not in dropped]

    def fitted_surrogate(self, history: History):
        """The surrogate fitted on the finished plain functions, or None (off, generation 0,
        or fewer than ``surrogate_min`` of them)."""
        if self.plan.surrogate is None or history.generation == 0:
            return None
        finished = [c for c in history.finished if c.plain]
        if len(finished) < self.config.surrogate_min:
            return None
        acts = [Activation.from_string(c.expression, self.pset) for c in finished]
        with untouched():
            return self.plan.surrogate.fit(acts, [c.fitness if c.status == Status.DONE
                                                  else None for c in finished],
                                           [c.function_key for c in finished])

    def insert(self, act: Activation, result, generation: int, parents, mutation, origin,
               function_id: Optional[int] = None) -> int:
        fields = dict(expression=act.expression, primitives=self.pset.spec,
                      params=list(act.params), dedup_key=result.dedup_key or None,
                      function_key=result.function_key or None, generation=generation,
                      parent_ids=list(parents), mutation=mutation, origin=origin)
        original = self.dedup.get(result.dedup_key) if result.dedup_key else None
        if original is not None:
            orig = self.store.candidate(original)
            status = orig.status if orig.status in (Status.DONE, Status.FAILED, Status.REJECTED) \
                else Status.PENDING
            cid = self.store.add_candidate(status=str(status), fitness=orig.fitness,
                                           error=orig.error, duplicate_of=original, **fields)
            log.info("candidate %d %s duplicates candidate %d: not trained again", cid,
                     _label(act.expression, act.params), original)
        elif not result.ok:
            status = Status.FAILED if result.failed else Status.REJECTED
            cid = self.store.add_candidate(status=str(status), error=result.reason, **fields)
            log.info("candidate %d %s %s: %s", cid, _label(act.expression, act.params), status,
                     result.reason)
        else:
            cid = self.store.add_candidate(status=str(Status.PENDING), **fields)
        self.store.update_candidate(cid, function_id=function_id or cid)
        if original is None and result.dedup_key:
            self.dedup[result.dedup_key] = cid
        if result.function_key:
            self.function_keys.add(result.function_key)
        return cid
