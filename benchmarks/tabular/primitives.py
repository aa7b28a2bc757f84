"""The tabular benchmark's operators as a search space: the search then proposes exactly the
table's functions (with ``max_height = 2`` and ``init_shapes = ["u(u(x))", "b(u(x),u(x))"]``:
every tree of height <= 2 over these operators is in the table, up to functional equality)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from space import BINARY, UNARY  # noqa: E402

from gp_activations import SearchSpace  # noqa: E402

space = SearchSpace("tabular", "the tabular benchmark's 15 unary and 6 binary operators")
space.use(*[u for u in UNARY if u != "x"], *BINARY)
