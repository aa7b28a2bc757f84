"""Tables: one object that renders itself as text, markdown, LaTeX or CSV, and the formatting
of what stands in them (fitness, accuracies ± std, p-values, functions and their LaTeX).

Every table the package prints or writes -- the search's top functions and final race, the
status of a run, the evaluation's results (console, ``results.tex``, ``results.csv``), the
report's markdown, the transfer tables, TensorBoard's text -- is a :class:`Table` of
:class:`Column` s whose cells are strings made by the formatters below::

    t = Table(Column("rank", ">", 4), Column("fitness", ">", 7), Column("function"))
    t.add("1", number(0.8221), "relu(x)")
    t.text()      # 'rank  fitness  function\\n   1   0.8221  relu(x)'
    t.markdown()  # '| rank | fitness | function |\\n|---:|---:|---|\\n| 1 | 0.8221 | relu(x) |'

Text columns follow f-string padding: ``width`` is the least width of each cell (a longer
cell runs over, as ``f"{s:>7s}"`` does), ``fit`` widens a column to its longest cell and
header, ``sep`` is what stands before the column; the last column is not padded when it is
left-aligned (no trailing spaces).  A row may carry lines printed below it in text.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Optional, Sequence

from .statistics import format_p


@dataclass(frozen=True)
class Column:
    header: str = ""
    align: str = "<"  # "<" left or ">" right: text padding, markdown ---:, LaTeX l/r
    width: int = 0  # text: the least width of a cell (and of the header)
    fit: bool = False  # text: widen to the longest cell (and the header, when it is shown)
    sep: str = "  "  # text: what stands between the previous column and this one


class Table:
    """Columns and rows of string cells; :meth:`text`, :meth:`markdown`, :meth:`latex` and
    :meth:`csv` render it."""

    def __init__(self, *columns):
        self.columns = [c if isinstance(c, Column) else Column(c) for c in columns]
        self.rows: list[tuple[list[str], list[str]]] = []  # (cells, lines below the row)

    def add(self, *cells, below: Sequence[str] = ()) -> "Table":
        if len(cells) != len(self.columns):
            raise ValueError(f"a row of {len(self.columns)} columns got {len(cells)} cells")
        self.rows.append(([str(c) for c in cells], list(below)))
        return self

    def __len__(self) -> int:
        return len(self.rows)

    # -- text -----------------------------------------------------------------------------
    def _widths(self, header: bool) -> list[int]:
        widths = []
        for i, col in enumerate(self.columns):
            width = col.width
            if col.fit:
                width = max([width] + ([len(col.header)] if header else [])
                            + [len(cells[i]) for cells, _ in self.rows])
            widths.append(width)
        return widths

    def _line(self, cells: Sequence[str], widths: Sequence[int], indent: str) -> str:
        last = len(self.columns) - 1
        parts = []
        for i, (col, cell, width) in enumerate(zip(self.columns, cells, widths)):
            if i == last and col.align == "<":
                width = 0
            parts.append((col.sep if i else "") + format(cell, f"{col.align}{width}"))
        return indent + "".join(parts)

    def text(self, header: bool = True, indent: str = "") -> str:
        """Aligned plain text: the header line (unless ``header=False``), then each row and
        the lines below it; every line but those below starts with ``indent``."""
        widths = self._widths(header)
        lines = [self._line([c.header for c in self.columns], widths, indent)] if header else []
        for cells, below in self.rows:
            lines.append(self._line(cells, widths, indent))
            lines += below
        return "\n".join(lines)

    # -- markdown, LaTeX, CSV -------------------------------------------------------------
    def markdown(self) -> str:
        """A GitHub markdown table (right-aligned columns as ``---:``); cells as they are."""
        lines = ["| " + " | ".join(c.header for c in self.columns) + " |",
                 "|" + "".join("---:|" if c.align == ">" else "---|" for c in self.columns)]
        lines += ["| " + " | ".join(cells) + " |" for cells, _ in self.rows]
        return "\n".join(lines)

    def latex(self, caption: str) -> str:
        """A booktabs ``table`` float with ``caption``; cells and headers as they are (LaTeX),
        the column spec from the alignments; ends with a newline."""
        spec = "".join("r" if c.align == ">" else "l" for c in self.columns)
        lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{caption}}}",
                 rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
                 " & ".join(c.header for c in self.columns) + r" \\", r"\midrule"]
        lines += [" & ".join(cells) + r" \\" for cells, _ in self.rows]
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
        return "\n".join(lines)

    def csv(self) -> str:
        """The header and the rows as CSV (Python's csv module, ``\\r\\n`` line ends): write it
        to a file opened with ``newline=""``."""
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow([c.header for c in self.columns])
        writer.writerows(cells for cells, _ in self.rows)
        return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# What stands in the cells
# ---------------------------------------------------------------------------------------------
def number(value: Optional[float], spec: str = ".4f", missing: str = "n/a") -> str:
    """A fitness or an accuracy: ``format(value, spec)``, ``missing`` for None."""
    return missing if value is None else format(value, spec)


def mean_std(mean: float, std: float, spec: str = ".4f", std_spec: Optional[str] = None,
             pm: str = " ± ", bold: str = "") -> str:
    """``0.8221 ± 0.0102``.  ``bold``: "markdown" bolds the whole (``**0.8221 ± 0.0102**``),
    "latex" the mean (``\\textbf{0.8221} ± 0.0102``)."""
    m, s = format(mean, spec), format(std, std_spec or spec)
    if bold == "latex":
        m = rf"\textbf{{{m}}}"
    text = f"{m}{pm}{s}"
    return f"**{text}**" if bold == "markdown" else text


def percent_pm(mean: float, std: float, spec: str = ".2f", std_spec: Optional[str] = None,
               pm: str = " ± ", bold: str = "") -> str:
    """An accuracy (a fraction) as percent, mean ± std: ``75.01 ± 1.99`` (:func:`mean_std`)."""
    return mean_std(100 * mean, 100 * std, spec, std_spec, pm, bold)


def p_value(p: Optional[float], missing: str = "") -> str:
    """A p-value (:func:`~gp_activations.statistics.format_p`), ``missing`` for None."""
    return format_p(p) or missing


def with_params(expression: str, params, at: str = " @ params ") -> str:
    """``expression @ params [0, 2]``; the expression alone without learnable scalars."""
    return expression + (f"{at}{params}" if params else "")


def failure_lines(reasons) -> str:
    """``     6 x diverged: ...``: ``(reason, count)`` pairs, one indented line each."""
    table = Table(Column(align=">", width=4), Column(sep=" x "))
    for reason, n in reasons:
        table.add(n, reason)
    return table.text(header=False, indent="  ")


def code(text) -> str:
    """Markdown inline code."""
    return f"`{text}`"


def tex_escape(text) -> str:
    """Plain text for LaTeX: backslashes, underscores and hashes escaped."""
    return str(text).replace("\\", r"\textbackslash{}").replace("_", r"\_").replace("#", r"\#")


def function_latex(activation) -> str:
    """An :class:`~gp_activations.activation.Activation`'s LaTeX, or a short note where none
    can be made (a tree too deep for sympy) -- a table must not fail on one function."""
    from .activation import latex_or_note

    return latex_or_note(activation)


def expression_latex(expression: str, primitives: str, params) -> str:
    """The LaTeX of a stored function (expression, search space, learnable-scalar nodes)."""
    from .activation import Activation

    return function_latex(Activation.from_string(expression, primitives, params))
