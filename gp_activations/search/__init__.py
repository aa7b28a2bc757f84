"""PANGAEA-style search: evolution (DEAP) over activation trees, a SQLite candidate store,
functional deduplication, resume, and serial / process / Ray execution.

    from gp_activations.search import SearchConfig, run_search
    result = run_search(SearchConfig(dataset="mnist1d", population=8, generations=3), out="runs/demo")
    print(result.table())
"""

from .config import SearchConfig
from .driver import Search, SearchResult, run_search
from .store import RunStore

__all__ = ["RunStore", "Search", "SearchConfig", "SearchResult", "run_search"]
