"""Progress for long commands: a tqdm bar on a terminal, plain log lines everywhere else.

A redirected stderr (a log file, CI, ``nohup``) gets no ``\\r``-rewritten bar: instead one line
every ``interval`` seconds and one at the end, e.g.
``search: 24/48 evals (50 %), best=0.9560, gen=1, 31 s``.
"""

from __future__ import annotations

import sys
import time


class LineProgress:
    """The part of tqdm's interface the commands use, printing whole lines."""

    def __init__(self, total=None, initial: int = 0, unit: str = "it", desc: str = "",
                 interval: float = 30.0, file=None):
        self.total, self.n, self.unit, self.desc = total, int(initial), unit, desc
        self.interval = interval
        self.file = file or sys.stderr
        self.postfix: dict = {}
        self.started = time.monotonic()
        self._last = self.started
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._print()

    def set_postfix(self, refresh: bool = False, **values) -> None:
        self.postfix.update(values)

    def refresh(self) -> None:
        pass

    def _print(self) -> None:
        share = f" ({100 * self.n / self.total:.0f} %)" if self.total else ""
        total = f"/{self.total}" if self.total else ""
        extra = "".join(f", {k}={v}" for k, v in self.postfix.items())
        print(f"{self.desc}: {self.n}{total} {self.unit}s{share}{extra}, "
              f"{time.monotonic() - self.started:.0f} s", file=self.file, flush=True)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._print()


def progress_bar(total=None, initial: int = 0, unit: str = "it", desc: str = "",
                 disable: bool = False):
    """A tqdm bar when stderr is a terminal, else a :class:`LineProgress`; None if disabled."""
    if disable:
        return None
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, unit=unit, desc=desc, file=sys.stderr,
                    dynamic_ncols=True)
    return LineProgress(total, initial, unit, desc)
