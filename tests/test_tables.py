"""The one table renderer (gp_activations/tables.py) and the result tables built on it,
checked against tables written out by hand."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from gp_activations.evaluate import ResultRow, format_table, latex_table, markdown_table
from gp_activations.search.results import SearchResult
from gp_activations.tables import (Column, Table, failure_lines, mean_std, number, p_value,
                                   percent_pm, tex_escape, with_params)
from gp_activations.transfer import Cell, Function, TransferTable


def _table() -> Table:
    t = Table(Column("rank", ">", 4), Column("fitness", ">", 7), Column("function"))
    t.add(1, "0.8221", "add(x, tanh(x))", below=["               x + tanh(x)"])
    t.add(12, "0.7000", "relu(x)")
    return t


def test_text_pads_like_fstrings_and_leaves_the_last_column_unpadded():
    assert _table().text() == (
        "rank  fitness  function\n"
        "   1   0.8221  add(x, tanh(x))\n"
        "               x + tanh(x)\n"
        "  12   0.7000  relu(x)")


def test_text_without_header_with_indent_fit_and_overflow():
    t = Table(Column("name", width=4, fit=True), Column("n", ">", 3, sep=" "),
              Column("why", sep=" x "))
    t.add("ab", "5", "diverged").add("abcdef", "1234", "timeout")
    # fit: the name column is as wide as its longest cell; n's cell of 4 runs over its 3
    assert t.text() == ("name     n x why\n"
                        "ab       5 x diverged\n"
                        "abcdef 1234 x timeout")
    assert t.text(header=False, indent="  ") == ("  ab       5 x diverged\n"
                                                 "  abcdef 1234 x timeout")


def test_a_right_aligned_last_column_is_padded():
    t = Table(Column("task"), Column("accuracy", ">", 10))
    t.add("digits", "0.9")
    assert t.text() == "task    accuracy\ndigits         0.9"


def test_markdown():
    assert _table().markdown() == ("| rank | fitness | function |\n"
                                   "|---:|---:|---|\n"
                                   "| 1 | 0.8221 | add(x, tanh(x)) |\n"
                                   "| 12 | 0.7000 | relu(x) |")


def test_latex_is_a_booktabs_float():
    t = Table(Column("Activation"), Column("Accuracy", ">"), Column("$n$", ">"))
    t.add(r"found \#1", r"\textbf{75.01} $\pm$ 1.99", 3).add("relu", r"70.00 $\pm$ 0.50", 3)
    assert t.latex("Test accuracy.") == (
        "\\begin{table}[t]\n"
        "\\centering\n"
        "\\caption{Test accuracy.}\n"
        "\\begin{tabular}{lrr}\n"
        "\\toprule\n"
        "Activation & Accuracy & $n$ \\\\\n"
        "\\midrule\n"
        "found \\#1 & \\textbf{75.01} $\\pm$ 1.99 & 3 \\\\\n"
        "relu & 70.00 $\\pm$ 0.50 & 3 \\\\\n"
        "\\bottomrule\n"
        "\\end{tabular}\n"
        "\\end{table}\n")


def test_csv_quotes_commas_and_ends_lines_with_crlf():
    t = Table("label", "params", "n")
    t.add("found #1", "[0, 2]", 2).add("relu", "[]", 3)
    text = t.csv()
    assert text == 'label,params,n\r\nfound #1,"[0, 2]",2\r\nrelu,[],3\r\n'
    assert list(csv.reader(io.StringIO(text))) == [["label", "params", "n"],
                                                   ["found #1", "[0, 2]", "2"], ["relu", "[]", "3"]]


def test_a_row_of_the_wrong_length_is_refused():
    with pytest.raises(ValueError, match="3 columns got 2"):
        _table().add("1", "2")


def test_formatters():
    assert number(None) == "n/a" and number(0.82214) == "0.8221" and number(3, "d", "") == "3"
    assert number(None, ".2f", "--") == "--"
    assert percent_pm(0.75013, 0.0199) == "75.01 ± 1.99"
    assert percent_pm(0.75013, 0.0199, "7.2f", "5.2f") == "  75.01 ±  1.99"
    assert percent_pm(0.75, 0.02, bold="markdown") == "**75.00 ± 2.00**"
    assert percent_pm(0.75, 0.02, pm=r" $\pm$ ", bold="latex") == r"\textbf{75.00} $\pm$ 2.00"
    assert mean_std(0.5, 0.25) == "0.5000 ± 0.2500"
    assert p_value(None) == "" and p_value(None, "--") == "--"
    assert p_value(0.0421) == "0.042" and p_value(0.00041) == "4.1e-04"
    assert with_params("relu(x)", []) == "relu(x)"
    assert with_params("relu(x)", [0, 2]) == "relu(x) @ params [0, 2]"
    assert with_params("`relu(x)`", [1], " @ ") == "`relu(x)` @ [1]"
    assert tex_escape(r"a_b #1 \x") == r"a\_b \#1 \textbackslash{}x"
    assert failure_lines([("diverged", 6), ("timeout", 12)]) == ("     6 x diverged\n"
                                                                 "    12 x timeout")


# ---------------------------------------------------------------------------------------------
# The result tables built on it
# ---------------------------------------------------------------------------------------------
def _rows(sequential=False):
    seq = dict(decision="different", decided_at=3, level=0.0112, min_detectable=0.0923)
    return [
        ResultRow("found #1", "found", "add(relu(x), x)", [0, 2], [0.64, 0.66, 0.68], 0.66, 0.02,
                  0.0031, **(seq if sequential else {})),
        ResultRow("relu", "baseline", "relu(x)", [], [0.75, 0.77], 0.76, 0.01, None, failed=1),
        ResultRow("leaky_relu", "baseline", "leaky_relu(x)", [], [0.80, 0.81], 0.805, 0.005,
                  0.041, best=True, **(dict(seq, decision="undecided at max", decided_at=4,
                                            level=0.029, min_detectable=None)
                                       if sequential else {})),
    ]


def test_evaluate_console_table():
    assert format_table(_rows()) == (
        "activation       test accuracy   n  p vs relu  function\n"
        "found #1       66.00 ±  2.00     3      0.003  add(relu(x), x) @ params [0, 2]\n"
        "relu           76.00 ±  1.00     2 (1 failed)             relu(x)\n"
        "leaky_relu     80.50 ±  0.50 *   2      0.041  leaky_relu(x)\n"
        "(* best mean)")


def test_evaluate_console_table_of_a_sequential_evaluation():
    lines = format_table(_rows(sequential=True)).split("\n")
    assert lines[:4] == [
        "activation       test accuracy   n  p vs relu    level  decision         seeds "
        "min. diff  function",
        "found #1       66.00 ±  2.00     3      0.003    0.011  different            3 "
        "     9.23  add(relu(x), x) @ params [0, 2]",
        "relu           76.00 ±  1.00     2 (1 failed)                                  "
        "                      relu(x)",
        "leaky_relu     80.50 ±  0.50 *   2      0.041    0.029  undecided at max     4 "
        "           leaky_relu(x)"]
    assert lines[4] == "(* best mean)" and lines[5].startswith("(sequential: seeds added")


def test_evaluate_latex_and_markdown_tables():
    tex = latex_table(_rows(), 1, "digits", "cnn_digits").split("\n")
    assert tex[2].startswith(r"\caption{Test accuracy (\%) on digits / cnn\_digits, 1 epochs,")
    assert tex[3:9] == [
        r"\begin{tabular}{llrrr}", r"\toprule",
        r"Activation & Function & Accuracy & $n$ & $p$ vs.\ ReLU \\", r"\midrule",
        r"found \#1 & $p_{0} \left(x + \max\left(0, p_{1} x\right)\right)$ & 66.00 $\pm$ 2.00 "
        r"& 3 & 0.003 \\",
        r"relu & relu & 76.00 $\pm$ 1.00 & 2 & -- \\"]
    assert tex[9] == r"leaky\_relu & leaky\_relu & \textbf{80.50} $\pm$ 0.50 & 2 & 0.041 \\"
    assert markdown_table(_rows()) == (
        "| activation | test accuracy (%) | n | p vs ReLU | function |\n"
        "|---|---:|---:|---:|---|\n"
        "| found #1 | 66.00 ± 2.00 | 3 | 0.003 | `add(relu(x), x)` @ [0, 2] |\n"
        "| relu | 76.00 ± 1.00 | 2 |  | `relu(x)` |\n"
        "| leaky_relu | **80.50 ± 0.50** | 2 | 0.041 | `leaky_relu(x)` |")


def test_search_result_tables():
    result = SearchResult(
        Path("run"), top=[{"rank": 1, "fitness": 0.82214, "label": "tanh(x)", "latex": r"\tanh",
                           "flags": "  [= tanh]", "tasks": [{"task": "digits", "accuracy": 0.9},
                                                           {"task": "mnist1d/mlp"}]},
                          {"rank": 2, "fitness": 0.8, "label": "x", "latex": "x"}],
        relu_fitness=None, skipped_note="1 affine function(s) not ranked",
        tasks=["digits", "mnist1d/mlp"], references={"digits": 0.75},
        race={"winner": "found #1", "seeds": 4, "means": {"relu": 0.5842, "found #1": 0.8286},
              "eliminated": {"relu": 4}, "p_vs_leader": {"relu": 0.000977}})
    assert result.table() == ("rank  fitness  function\n"
                              "   1   0.8221  tanh(x)  [= tanh]\n"
                              "               \\tanh\n"
                              "   2   0.8000  x\n"
                              "               x\n"
                              "          n/a  relu(x)  (ReLU under the same budget)\n"
                              "note: 1 affine function(s) not ranked\n"
                              "note: ranked by the final race (the functions it raced first, in "
                              "its order), then by fitness")
    assert result.task_table() == ("per task (validation accuracy; ReLU's below):\n"
                                   "rank       digits  mnist1d/mlp\n"
                                   "   1       0.9000          n/a\n"
                                   "   2          n/a          n/a\n"
                                   "relu       0.7500          n/a")
    assert result.race_table() == (
        "final race (full schedule, validation accuracy; winner: found #1; entrants named by "
        "their fitness rank):\n"
        "  0.8286  found #1                 winner\n"
        "  0.5842  relu                     dropped at 4 seeds (p = 0.000977 vs the leader)")


def test_transfer_tables():
    fns = [Function("r1 #1", "found", "sin(x)", "pangaea", [0], "digits/cnn_digits"),
           Function("relu", "baseline", "relu(x)", "pangaea", [])]
    task = "digits/cnn_digits"
    table = TransferTable([task], fns, seeds=3, best_baseline={task: "relu"})
    table.cells = {("r1 #1", task): Cell([0.8, 0.82], 1, 0.81, 0.0141, p_vs_relu=0.01,
                                         p_vs_best=0.01, mean_vs_relu_up=True, beats_best=True),
                   ("relu", task): Cell([0.7, 0.7, 0.7], 0, 0.7, 0.0, best=True)}
    assert table.text().split("\n")[:3] == [
        "function       digits/cnn_digits",
        "r1 #1         81.00 ± 1.41 (1 failed)+!",
        "relu                70.00 ± 0.00"]
    assert table.text().split("\n")[4] == ("  r1 #1: sin(x) @ params [0]  (found on "
                                           "digits/cnn_digits)")
    assert table.markdown().split("\n")[:4] == [
        "| function | found on | digits/cnn_digits |",
        "|---|---|---:|",
        "| r1 #1 `sin(x) @ [0]` | digits/cnn_digits | **81.00 ± 1.41 (1 failed) ▲** |",
        "| relu | -- | 70.00 ± 0.00 |"]
    rows = list(csv.reader(io.StringIO(table.csv())))
    assert rows[1] == ["r1 #1", "found", "digits/cnn_digits", "sin(x)", "[0]", "digits/cnn_digits",
                       "2", "1", "0.810000", "0.014100", "0.010", "0.010", "relu",
                       "0.800000 0.820000"]
