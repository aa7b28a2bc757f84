"""What a search gives back: its best functions, counts and failures, and their tables."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..activation import Activation, latex_or_note
from .ranking import flag_text, ranked_functions, skipped_note
from .store import RunStore

log = logging.getLogger("gp_activations.search")


@dataclass
class SearchResult:
    run_dir: Path
    top: list = field(default_factory=list)  # dicts: rank, fitness, expression, params, latex...
    relu_fitness: Optional[float] = None
    counts: dict = field(default_factory=dict)
    dedup_hits: int = 0
    interrupted: bool = False
    wall_time: float = 0.0

    skipped_note: str = ""  # affine functions left out of the ranking
    failures: list = field(default_factory=list)  # (reason, count), most common first
    tasks: list = field(default_factory=list)  # multi-task: names; top rows carry "tasks"
    references: dict = field(default_factory=dict)  # multi-task: ReLU's accuracy per task name
    race: Optional[dict] = None  # the final race's outcome (search/race.py), if there was one

    @property
    def winner(self) -> Optional[str]:
        """The search's winner: the final race's, else the best fitness's label."""
        if self.race:
            return self.race["winner"]
        return self.top[0]["label"] if self.top else None

    def race_table(self) -> str:
        """The final race: each entrant's mean validation accuracy (full schedule) over the
        seeds it trained, and where it left the race."""
        if not self.race:
            return ""
        race = self.race
        lines = [f"final race (full schedule, validation accuracy; winner: {race['winner']}):"]
        for label, mean in sorted(race["means"].items(), key=lambda kv: -kv[1]):
            out = race["eliminated"].get(label)
            p = race["p_vs_leader"].get(label)
            where = (f"dropped at {out} seeds (p = {p:.3g} vs the leader)" if out
                     else "winner" if label == race["winner"] else
                     f"still in at {race['seeds']} seeds" + (f" (p = {p:.3g})" if p is not None
                                                              else ""))
            lines.append(f"  {mean:.4f}  {label:24s} {where}")
        return "\n".join(lines)

    def task_table(self) -> str:
        """A multi-task search's top functions, one column per task (validation accuracy)."""
        if not self.tasks:
            return ""
        width = max(9, *(len(t) for t in self.tasks))
        lines = ["per task (validation accuracy; ReLU's below):",
                 f"{'rank':>4s}  " + "  ".join(f"{t:>{width}s}" for t in self.tasks)]
        for row in self.top:
            accs = {t["task"]: t.get("accuracy") for t in row.get("tasks", [])}
            lines.append(f"{row['rank']:4d}  " + "  ".join(
                f"{'n/a' if accs.get(t) is None else format(accs[t], '.4f'):>{width}s}"
                for t in self.tasks))
        lines.append(f"{'relu':>4s}  " + "  ".join(
            f"{'n/a' if self.references.get(t) is None else format(self.references[t], '.4f'):>{width}s}"
            for t in self.tasks))
        return "\n".join(lines)

    @property
    def all_failed(self) -> bool:
        """Nothing trained successfully although something was tried."""
        return self.counts.get("done", 0) == 0 and bool(self.failures)

    def failure_summary(self, limit: int = 5) -> str:
        lines = [f"  {n:4d} x {reason}" for reason, n in self.failures[:limit]]
        more = len(self.failures) - limit
        return "\n".join(lines + ([f"  ... and {more} other reasons"] if more > 0 else []))

    def table(self) -> str:
        lines = [f"{'rank':>4s}  {'fitness':>7s}  function", ]
        for row in self.top:
            lines.append(f"{row['rank']:4d}  {row['fitness']:7.4f}  {row['label']}{row.get('flags', '')}")
            lines.append(f"{'':15s}{row['latex']}")
        relu = "n/a" if self.relu_fitness is None else f"{self.relu_fitness:.4f}"
        lines.append(f"{'':4s}  {relu:>7s}  relu(x)  (ReLU under the same budget)")
        if self.skipped_note:
            lines.append(f"note: {self.skipped_note}")
        return "\n".join(lines)



def search_result(store: RunStore, plan, interrupted: bool = False, wall_time: float = 0.0,
                  k: int = 5) -> SearchResult:
    """The :class:`SearchResult` of the run in ``store`` (searched with ``plan``)."""
    config = plan.config
    top = []
    ranked, skipped = ranked_functions(store, k, config.variant_fitness, config.allow_linear)
    for rank, item in enumerate(ranked, 1):
        cand = item["candidate"]
        act = Activation.from_string(cand.expression, plan.pset, cand.params)
        metrics = cand.metrics or {}
        top.append({"rank": rank, "fitness": item["fitness"], "expression": cand.expression,
                    "tasks": metrics.get("tasks", []) if plan.multi_task else [],
                    "params": list(cand.params), "candidate_id": cand.id,
                    "function_id": item["function_id"], "label": cand.label,
                    "latex": latex_or_note(act), "linear": item["linear"],
                    "equals": item["equals"], "flags": flag_text(item)})
        if item["linear"] or item["equals"]:
            log.info("rank %d %s is flagged:%s", rank, top[-1]["label"], top[-1]["flags"])
    note = skipped_note(skipped)
    if note:
        log.warning(note)
    names = [t.name for t in plan.tasks]
    refs = {r.name: r.accuracy for r in store.task_runs(0).values()} if names else {}
    return SearchResult(store.run_dir, top, store.relu_fitness(), store.status_counts(),
                        store.get_meta("dedup_hits", 0), interrupted, wall_time, note,
                        store.failure_reasons(), names, refs, store.get_meta("race"))
