"""Progress for long commands: a tqdm bar on a terminal, plain log lines everywhere else.

A redirected stderr (a log file, CI, ``nohup``) gets no ``\\r``-rewritten bar but whole lines,
each with an estimate of the time left once there is a rate to go by, e.g.
``search: 24/48 evals (50 %), best=0.9560, gen=1, 31 s, ETA 31 s``:

* the first line as soon as the first result arrives, or after ``first_after`` seconds (10)
  if none has by then -- a log shows at once that the command is alive;
* then one line whenever ``interval`` seconds (30) have passed or another ``step`` percent
  (10 %) is done, but never two within ``min_gap`` seconds (5) -- a fast run does not flood
  its log, a slow one reports at least twice a minute while results arrive;
* one line at the end.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Optional


def format_seconds(seconds: float) -> str:
    """``42 s``, ``7 min 5 s``, ``3 h 12 min``."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"


class LineProgress:
    """The part of tqdm's interface the commands use, printing whole lines."""

    def __init__(self, total=None, initial: int = 0, unit: str = "it", desc: str = "",
                 interval: float = 30.0, file=None, *, first_after: Optional[float] = 10.0,
                 step: float = 10.0, min_gap: float = 5.0):
        self.total, self.n, self.unit, self.desc = total, int(initial), unit, desc
        self.initial = int(initial)
        self.interval, self.step, self.min_gap = interval, step, min(min_gap, interval)
        self.file = file or sys.stderr
        self.postfix: dict = {}
        self.started = time.monotonic()
        self._last: Optional[float] = None  # when the last line was printed
        self._last_share = 0.0
        self._closed = False
        self._lock = threading.Lock()
        self._timer = None
        if first_after is not None:
            self._timer = threading.Timer(first_after, self._first_line)
            self._timer.daemon = True
            self._timer.start()

    def _first_line(self) -> None:
        with self._lock:
            if self._last is None and not self._closed:
                self._print()

    def update(self, n: int = 1) -> None:
        with self._lock:
            self.n += n
            now = time.monotonic()
            if self._due(now):
                self._print()

    def _share(self) -> float:
        return 100.0 * self.n / self.total if self.total else 0.0

    def _due(self, now: float) -> bool:
        if self._last is None:
            return True  # the first result
        since = now - self._last
        if since >= self.interval:
            return True
        stepped = self.total and self._share() - self._last_share >= self.step
        return bool(stepped) and since >= self.min_gap

    def set_postfix(self, refresh: bool = False, **values) -> None:
        self.postfix.update(values)

    def refresh(self) -> None:
        pass

    def eta(self) -> Optional[float]:
        """Seconds left at the rate of this command's results so far (None: no rate yet)."""
        done = self.n - self.initial
        if not self.total or done <= 0 or self.n >= self.total:
            return None
        return (time.monotonic() - self.started) / done * (self.total - self.n)

    def _print(self, final: bool = False) -> None:
        self._last = time.monotonic()
        self._last_share = self._share()
        share = f" ({self._share():.0f} %)" if self.total else ""
        total = f"/{self.total}" if self.total else ""
        extra = "".join(f", {k}={v}" for k, v in self.postfix.items())
        eta = None if final else self.eta()
        print(f"{self.desc}: {self.n}{total} {self.unit}s{share}{extra}, "
              f"{format_seconds(self._last - self.started)}"
              + ("" if eta is None else f", ETA {format_seconds(eta)}"),
              file=self.file, flush=True)

    def close(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            if not self._closed:
                self._closed = True
                self._print(final=True)


def progress_bar(total=None, initial: int = 0, unit: str = "it", desc: str = "",
                 disable: bool = False, file=None):
    """A tqdm bar when ``file`` (stderr) is a terminal, else a :class:`LineProgress`; None if
    disabled."""
    if disable:
        return None
    file = file or sys.stderr
    if file.isatty():
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, unit=unit, desc=desc, file=file,
                    dynamic_ncols=True)
    return LineProgress(total, initial, unit, desc, file=file)
