"""Where evaluations run: in-process, in a pool of spawned processes, or on Ray.

All three executors run :func:`~gp_activations.search.worker.evaluate_task` on the wire form of
:class:`~gp_activations.search.jobs.Job` s and hand each result back as it finishes;
:func:`run_jobs` is the one way in: typed jobs in, typed results out through ``on_result``, so
the caller can commit each at once.  A worker that crashes (segfault, ``kill -9``, out of memory) or
runs past ``timeout`` yields a ``failed`` result for that task; the worker is replaced and
the search goes on.  With the same seed and thread count every executor produces the same
results: a result depends on its task only, never on which worker ran it or when.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import tempfile
import time
from collections import deque
from multiprocessing.connection import wait
from pathlib import Path
from typing import Callable, Optional

from ..errors import UserError
from .jobs import Job, JobKey, JobResult
from .worker import evaluate_task, prepare

log = logging.getLogger("gp_activations.search")

OnStart = Callable[[dict], None]
OnResult = Callable[[dict], None]


def _failure(task: dict, message: str, started: float) -> dict:
    return JobResult.failure(JobKey.from_wire(task["key"]), message, started,
                             time.time()).to_wire()


def _name(task: dict) -> str:
    return str(JobKey.from_wire(task["key"]))


class SerialExecutor:
    """Evaluations one after another in this process (timeouts are the trainer's soft limit)."""

    name = "serial"

    def __init__(self, threads: int = 1, warmup: Optional[dict] = None, **_):
        self.threads = threads
        self.workers = 1
        self._saved_threads = None
        if warmup:  # as a worker process would: the first evaluation's time is its own
            prepare(warmup)

    def run(self, tasks: list, on_start: OnStart, on_result: OnResult) -> None:
        if self._saved_threads is None:
            import torch

            self._saved_threads = torch.get_num_threads()  # tasks set their own; restored in close
        for task in tasks:
            on_start(task)
            on_result(evaluate_task(task))

    def close(self) -> None:
        if self._saved_threads is not None:
            import torch

            torch.set_num_threads(self._saved_threads)
            self._saved_threads = None


# ---------------------------------------------------------------------------------------------
#: What a worker sends once its imports are done: task timeouts count from then, so that a
#: slow start (importing torch takes seconds) never counts against the first task.
_READY = "ready"
#: How long a starting worker may take before its task's timeout starts counting anyway.
_STARTUP_GRACE = 300.0


def _worker_main(conn, env: dict, warmup: Optional[dict] = None) -> None:  # pragma: no cover
    """A worker process: evaluate each task the driver sends until it sends None.

    When the driver is gone (``kill -9``, a crash) the worker exits at once and quietly: its
    pipe fails (EOF, broken pipe, reset) or its parent changes (an orphan notices within a
    second, mid-task too) -- never a traceback on the terminal the driver shared with it.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver handles Ctrl-C and stops us
    os.environ.update(env)
    driver = os.getppid()

    def quit_quietly():
        # Every result has been sent (or nobody is left to receive it); skip the interpreter's
        # teardown (about 1 s with torch loaded, which the driver would wait for at the end of
        # every search).  A stream whose reader is gone must not complain either.
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 -- a broken pipe, a closed terminal
                pass
        os._exit(0)

    def watch_driver():
        while True:
            time.sleep(1.0)
            if os.getppid() != driver:  # orphaned: re-parented to init or a subreaper
                quit_quietly()

    import threading

    threading.Thread(target=watch_driver, name="driver-watch", daemon=True).start()
    import torch  # noqa: F401 -- the slow imports of every task, before the clock starts

    from .. import activation, train  # noqa: F401
    if warmup:
        prepare(warmup)
    gone = (EOFError, OSError)  # BrokenPipeError, ConnectionResetError: the driver is gone
    try:
        conn.send(_READY)
    except gone:
        quit_quietly()
    while True:
        try:
            task = conn.recv()
        except (KeyboardInterrupt, *gone):
            task = None
        if task is None:
            quit_quietly()
        result = evaluate_task(task)
        try:
            conn.send(result)
        except gone:
            quit_quietly()


class _Slot:
    def __init__(self, index: int, env: dict):
        self.index, self.env = index, env
        self.process = self.conn = self.task = None
        self.started = 0.0
        self.ready = False


class ProcessExecutor:
    """A pool of spawned worker processes, one per device slot, each with its own pipe.

    Spawned (not forked) so that torch, CUDA and threads start clean.  On CUDA each worker sees
    one GPU (``CUDA_VISIBLE_DEVICES``); on the CPU each gets ``threads`` threads.
    """

    name = "process"

    def __init__(self, workers: int = 2, threads: int = 1, timeout: Optional[float] = None,
                 gpus: int = 0, warmup: Optional[dict] = None, **_):
        self.workers, self.threads, self.timeout = workers, threads, timeout
        self.warmup = warmup  # a task whose dataset each worker loads before saying it is ready
        self.ctx = multiprocessing.get_context("spawn")
        self.deaths_in_a_row = 0  # workers that died before returning anything
        self.slots = []
        for i in range(workers):
            env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = str(i % gpus)
            self.slots.append(_Slot(i, env))
        for slot in self.slots:
            self._start(slot)

    def _start(self, slot: _Slot) -> None:
        parent, child = self.ctx.Pipe()
        saved = {k: os.environ.get(k) for k in slot.env}
        os.environ.update(slot.env)  # inherited by the child before it imports torch
        try:
            slot.process = self.ctx.Process(target=_worker_main, args=(child, slot.env, self.warmup),
                                            name=f"gp-activations-worker-{slot.index}", daemon=True)
            slot.process.start()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        child.close()
        slot.conn, slot.task, slot.ready = parent, None, False

    def _restart(self, slot: _Slot) -> None:
        if slot.process.is_alive():
            slot.process.kill()
        slot.process.join(timeout=10)
        slot.conn.close()
        self._start(slot)

    def run(self, tasks: list, on_start: OnStart, on_result: OnResult) -> None:
        queue = deque(tasks)
        while queue or any(s.task for s in self.slots):
            for slot in self.slots:
                if slot.task is None and queue:
                    task = queue.popleft()
                    on_start(task)
                    slot.task, slot.started = task, time.time()
                    try:
                        slot.conn.send(task)
                    except (BrokenPipeError, OSError):
                        pass  # found dead below
            busy = [s for s in self.slots if s.task]
            wait([s.conn for s in busy] + [s.process.sentinel for s in busy], timeout=1.0)
            for slot in busy:
                self._check(slot, on_result)

    def _check(self, slot: _Slot, on_result: OnResult) -> None:
        task = slot.task
        while slot.conn.poll():
            try:
                result = slot.conn.recv()
            except (EOFError, OSError):
                break
            if result == _READY:
                slot.ready = True
                slot.started = max(slot.started, time.time())  # the task starts only now
                continue
            if result is not None:
                slot.task = None
                self.deaths_in_a_row = 0
                on_result(result)
                return
        if not slot.process.is_alive():
            code = slot.process.exitcode
            log.warning("worker %d died (exit code %s) running %s", slot.index, code, _name(task))
            slot.task = None
            on_result(_failure(task, f"worker process died (exit code {code})", slot.started))
            self.deaths_in_a_row += 1
            if self.deaths_in_a_row >= 3 * len(self.slots):
                raise UserError(
                    f"worker processes keep dying (last exit code {code}); see their messages "
                    "above. A script that starts a search must guard it with "
                    "`if __name__ == \"__main__\":` (spawned workers import it)")
            self._restart(slot)
        elif self.timeout and time.time() - slot.started > self.timeout + (
                0 if slot.ready else _STARTUP_GRACE):
            log.warning("%s timed out after %.0f s; restarting worker %d",
                        _name(task), self.timeout, slot.index)
            slot.task = None
            on_result(_failure(task, f"timed out after {self.timeout:g} s", slot.started))
            self._restart(slot)

    def close(self) -> None:
        for slot in self.slots:
            try:
                if slot.task is None:
                    slot.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        deadline = time.time() + 5
        for slot in self.slots:
            slot.process.join(timeout=max(0.1, deadline - time.time()))
            if slot.process.is_alive():
                slot.process.kill()
                slot.process.join(timeout=5)
            slot.conn.close()


# ---------------------------------------------------------------------------------------------
def _ray_temp_dir(run_dir: Path) -> str:
    """Ray's session files inside the run directory -- unless that path is too long for the
    Unix sockets Ray creates below it (~107 bytes), then a short /tmp path linked from it."""
    preferred = (Path(run_dir) / "ray").resolve()
    if len(str(preferred)) <= 40:
        preferred.mkdir(parents=True, exist_ok=True)
        return str(preferred)
    short = tempfile.mkdtemp(prefix="gpa-ray-")
    try:
        if not preferred.exists():
            preferred.symlink_to(short)
    except OSError:
        pass
    return short


class RayExecutor:
    """One Ray task per evaluation (``num_gpus=1`` on CUDA), at most ``workers`` in flight.

    Joins ``address`` when given; otherwise starts a local Ray with auth disabled and its
    temporary files under the run directory, and shuts it down at the end.
    """

    name = "ray"

    def __init__(self, workers: int = 2, threads: int = 1, timeout: Optional[float] = None,
                 gpus: int = 0, address: Optional[str] = None, run_dir: Optional[Path] = None, **_):
        try:
            import ray
        except ImportError:
            raise UserError("the ray executor needs Ray: pip install 'gp-activations[ray]'") from None
        self.ray = ray
        self.workers, self.threads, self.timeout = workers, threads, timeout
        self._started_ray = False
        self._temp_dir = None
        if not ray.is_initialized():
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                          runtime_env={"env_vars": {"OMP_NUM_THREADS": str(threads)}})
            if address:
                ray.init(address=address, **kwargs)
            else:
                self._temp_dir = _ray_temp_dir(run_dir or Path(tempfile.mkdtemp(prefix="gpa-ray-")))
                ray.init(num_cpus=workers * threads, num_gpus=gpus, _temp_dir=self._temp_dir, **kwargs)
            self._started_ray = True
        self.remote = ray.remote(evaluate_task).options(
            num_cpus=threads, num_gpus=1 if gpus else 0, max_retries=0)

    def run(self, tasks: list, on_start: OnStart, on_result: OnResult) -> None:
        ray = self.ray
        queue = deque(tasks)
        inflight: dict = {}  # ref -> (task, started)
        while queue or inflight:
            while queue and len(inflight) < self.workers:
                task = queue.popleft()
                on_start(task)
                inflight[self.remote.remote(task)] = (task, time.time())
            done, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
            for ref in done:
                task, started = inflight.pop(ref)
                try:
                    on_result(ray.get(ref))
                except ray.exceptions.RayError as exc:
                    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                    log.warning("Ray task for %s failed: %s", _name(task), first)
                    on_result(_failure(task, f"Ray worker failed: {type(exc).__name__}: {first}", started))
            if self.timeout:
                now = time.time()
                for ref, (task, started) in list(inflight.items()):
                    if now - started > self.timeout:
                        ray.cancel(ref, force=True)
                        inflight.pop(ref)
                        on_result(_failure(task, f"timed out after {self.timeout:g} s", started))

    def close(self) -> None:
        if self._started_ray:
            self.ray.shutdown()  # its session files stay (linked from) the run directory, for debugging


def run_jobs(executor, jobs, on_start: Callable[[Job], None],
             on_result: Callable[[JobResult], None]) -> None:
    """Run ``jobs`` on ``executor``: ``on_start(job)`` as each one starts, ``on_result(result)``
    as each one finishes (in the order they finish)."""
    by_key = {job.key: job for job in jobs}
    executor.run([job.to_wire() for job in jobs],
                 lambda wire: on_start(by_key[JobKey.from_wire(wire["key"])]),
                 lambda wire: on_result(JobResult.from_wire(wire)))


def execute(jobs, on_start: Callable[[Job], None], on_result: Callable[[JobResult], None], *,
            executor: str, workers: int, threads: int, timeout: Optional[float], gpus: int,
            ray_address: Optional[str] = None, run_dir: Optional[Path] = None,
            progress: Optional[dict] = None) -> None:
    """Run ``jobs`` on a new executor of kind ``executor`` and close it: the one pipeline of
    ``evaluate`` and ``transfer``.  ``progress``: a progress bar's settings (total, initial,
    unit, desc), advanced by each result; None for none."""
    from ..progress import progress_bar

    bar = progress_bar(**progress) if progress else None

    def finished(result: JobResult) -> None:
        on_result(result)
        if bar is not None:
            bar.update(1)

    runner = make_executor(executor, workers=workers, threads=threads, timeout=timeout, gpus=gpus,
                           ray_address=ray_address, run_dir=run_dir)
    try:
        run_jobs(runner, jobs, on_start, finished)
    finally:
        runner.close()
        if bar is not None:
            bar.close()


def device_slots(device: str) -> tuple[str, int]:
    """(device type, GPUs to spread workers over) of a ``device`` setting ("auto", "cpu",
    "cuda", ...)."""
    from ..train import resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda":
        import torch

        return "cuda", torch.cuda.device_count()
    return dev.type, 0


def default_task_timeout(kind: str, train_config) -> Optional[float]:
    """Seconds after which a worker is presumed hung: generous, since a CPU training of a big
    model legitimately takes hours (set ``task_timeout`` for a tighter limit)."""
    if kind == "serial":
        return None  # in-process: only the trainer's own (soft) time limit applies
    limit = getattr(train_config, "time_limit", None)
    return 2 * limit + 120 if limit else 24 * 3600.0


def make_executor(kind: str, *, workers: int, threads: int, timeout: Optional[float], gpus: int,
                  ray_address: Optional[str] = None, run_dir: Optional[Path] = None,
                  warmup: Optional[dict] = None):
    if workers < 1 or threads < 1:
        raise UserError(f"workers and threads must be >= 1 (got {workers} and {threads})")
    if kind == "serial":
        return SerialExecutor(threads=threads, warmup=warmup)
    if kind == "process":
        return ProcessExecutor(workers=workers, threads=threads, timeout=timeout, gpus=gpus,
                               warmup=warmup)
    if kind == "ray":
        return RayExecutor(workers=workers, threads=threads, timeout=timeout, gpus=gpus,
                           address=ray_address, run_dir=run_dir)
    raise UserError(f"unknown executor {kind!r}; use serial, process or ray")
