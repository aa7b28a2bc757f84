"""What a search gives back: its best functions, counts and failures, and their tables."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..activation import Activation, latex_or_note
from ..tables import Column, Table, failure_lines, number
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
        table = Table(Column(), Column(width=24), Column(sep=" "))
        for label, mean in sorted(race["means"].items(), key=lambda kv: -kv[1]):
            table.add(number(mean), label, _race_outcome(race, label))
        lines = [f"final race (full schedule, validation accuracy; winner: {race['winner']}; "
                 f"entrants named by their fitness rank):", table.text(header=False, indent="  ")]
        if race.get("screen"):
            screen = Table(Column(), Column(width=24), Column(sep=" "))
            for label, acc in sorted(race["screen"].items(), key=lambda kv: -(kv[1] or 0.0)):
                screen.add(number(acc), label, "raced" if label in race["means"] else "")
            lines += [f"its screen (one seed of the same schedule; the race's own seeds are "
                      f"fresh): {len(race['screen'])} trained", screen.text(header=False,
                                                                             indent="  ")]
        return "\n".join(lines)

    def task_table(self) -> str:
        """A multi-task search's top functions, one column per task (validation accuracy)."""
        if not self.tasks:
            return ""
        width = max(9, *(len(t) for t in self.tasks))
        table = Table(Column("rank", ">", 4), *(Column(t, ">", width) for t in self.tasks))
        for row in self.top:
            accs = {t["task"]: t.get("accuracy") for t in row.get("tasks", [])}
            table.add(row["rank"], *(number(accs.get(t)) for t in self.tasks))
        table.add("relu", *(number(self.references.get(t)) for t in self.tasks))
        return "\n".join(["per task (validation accuracy; ReLU's below):", table.text()])

    @property
    def all_failed(self) -> bool:
        """Nothing trained successfully although something was tried."""
        return self.counts.get("done", 0) == 0 and bool(self.failures)

    def failure_summary(self, limit: int = 5) -> str:
        shown, more = self.failures[:limit], len(self.failures) - limit
        return "\n".join(([failure_lines(shown)] if shown else [])
                         + ([f"  ... and {more} other reasons"] if more > 0 else []))

    def table(self) -> str:
        table = Table(Column("rank", ">", 4), Column("fitness", ">", 7), Column("function"))
        for row in self.top:
            table.add(row["rank"], number(row["fitness"]), row["label"] + row.get("flags", ""),
                      below=[" " * 15 + row["latex"]])
        table.add("", number(self.relu_fitness), "relu(x)  (ReLU under the same budget)")
        notes = ([self.skipped_note] if self.skipped_note else []) + (
            [f"ranked by the final race (the functions it "
             f"{'raced or screened' if self.race.get('screen') else 'raced'} first, in its "
             f"order), then by fitness"] if self.race else [])
        return table.text() + "".join(f"\nnote: {n}" for n in notes)


def _race_outcome(race: dict, label: str) -> str:
    """Where ``label`` left the final race: dropped (at how many seeds), winner, still in."""
    out = race["eliminated"].get(label)
    p = race["p_vs_leader"].get(label)
    if out:
        return f"dropped at {out} seeds (p = {p:.3g} vs the leader)"
    if label == race["winner"]:
        return "winner"
    return f"still in at {race['seeds']} seeds" + (f" (p = {p:.3g})" if p is not None else "")



def search_result(store: RunStore, plan, interrupted: bool = False, wall_time: float = 0.0,
                  k: int = 5) -> SearchResult:
    """The :class:`SearchResult` of the run in ``store`` (searched with ``plan``)."""
    config = plan.config
    top = []
    ranked, skipped = ranked_functions(store, k, config.variant_fitness, config.allow_linear,
                                       race=True)
    for rank, item in enumerate(ranked, 1):
        cand = item["candidate"]
        act = Activation.from_string(cand.expression, plan.pset, cand.params)
        act = config.as_trained(act)
        item = {**item, "equals": config.baseline_equal(item["equals"])}
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
