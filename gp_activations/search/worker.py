"""What runs inside a worker: one evaluation, plain data in and plain data out.

A task is the wire form of a :class:`~gp_activations.search.jobs.Job` (strings and numbers:
the expression travels as text, the model, data or fitness function as ``module:function``
references), so every executor -- in-process, a spawned process, a Ray task -- runs exactly the
same code.  The result is the wire form of a :class:`~gp_activations.search.jobs.JobResult`;
no DEAP individual, tensor or activation object crosses a process boundary.
"""

from __future__ import annotations

import math
import os
import time

from ..errors import UserError
from ..references import resolve_reference
from .jobs import Job, JobResult, JobStatus

def _resolve(value):
    return resolve_reference(value) if isinstance(value, str) and ":" in value else value


_DATASETS: dict = {}


def _job_dataset(job: Job):
    """A user's data (a reference, loader, tensors or torch datasets), built once per process."""
    from ..data import as_dataset

    source = job.data
    key = source if isinstance(source, str) else id(source)
    if key not in _DATASETS:
        _DATASETS[key] = as_dataset(_resolve(source), name=job.dataset or "custom")
    return _DATASETS[key]


def _plain_json(value):
    """A user's metrics as JSON-serialisable values (numpy/torch scalars and arrays -> lists)."""
    if isinstance(value, dict):
        return {str(k): _plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_json(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "tolist"):  # numpy and torch scalars / arrays
        return _plain_json(value.tolist())
    return str(value)


def prepare(wire: dict) -> None:
    """Load what every job of a run shares (its dataset, torch's lazy imports) ahead of the first
    job, so that a worker's start-up overlaps the driver's work instead of the first evaluation."""
    try:
        job = Job.from_wire(wire)
        if job.lookup:
            from ..tabular import load_table

            load_table(job.lookup)
        elif job.fitness:
            _resolve(job.fitness)
        elif job.data is not None:
            _job_dataset(job)
        else:
            from ..train import get_dataset, resolve_device

            get_dataset(job.dataset, resolve_device(job.device), data_dir=job.data_dir,
                        download=job.download, verify=job.verify, val_size=job.val_size,
                        test_size=job.test_size)
    except Exception:  # noqa: BLE001 -- the first real task reports the problem
        pass
    # A process's first torch.optim optimizer imports torch._dynamo (about 1.7 s here): pay it
    # now, not inside the first candidate's training time.
    import torch

    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)


def evaluate_task(wire: dict) -> dict:
    """Train (or call the user's fitness on) one job, given and answered in wire form; never
    raises."""
    started = time.time()
    try:
        job = Job.from_wire(wire)
    except Exception as exc:  # noqa: BLE001 -- a malformed job is a failed one
        from .jobs import JobKey

        return JobResult.failure(JobKey.from_wire(wire["key"]), f"bad task: {exc}", started,
                                 time.time()).to_wire()
    outcome = {"status": JobStatus.FAILED, "fitness": None, "metrics": None, "error": ""}
    try:
        outcome.update(_evaluate(job))
    except UserError as exc:
        outcome["error"] = f"bad task: {exc}"
    except Exception as exc:  # noqa: BLE001 -- the search goes on
        outcome["error"] = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
    return JobResult(job.key, JobStatus(outcome["status"]), outcome["fitness"], outcome["metrics"],
                     outcome["error"] or "", started, time.time(), os.getpid()).to_wire()


def _takes(fn, name: str) -> bool:
    """Whether ``fn`` has a parameter named ``name`` that can be passed by keyword (not
    through ``**kwargs``: a hook that forwards its keywords is not given what it did not ask
    for)."""
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin or C callable: called with seed only
        return False
    return name in params and params[name].kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                    inspect.Parameter.KEYWORD_ONLY)


def _evaluate(job: Job) -> dict:
    import torch

    from ..activation import Activation
    from ..train import TrainConfig, train

    if job.threads:
        torch.set_num_threads(int(job.threads))
    act = Activation.from_string(job.expression, job.primitives, list(job.params))
    if job.normalize:
        act = act.normalized()
    if job.lookup:  # a tabular benchmark: the training was done when it was built
        from ..tabular import lookup_task

        return lookup_task(job)
    if job.fitness:
        fn = _resolve(job.fitness)
        epochs = (job.train or {}).get("epochs")
        value = fn(act, seed=job.seed, **({"epochs": epochs} if epochs is not None
                                          and _takes(fn, "epochs") else {}))
        # numpy / torch scalars are common return values: stored as plain JSON numbers
        metrics = _plain_json(value if isinstance(value, dict) else {"fitness": value})
        fitness = float(metrics.get("fitness", metrics.get("accuracy", float("nan"))))
        ok = math.isfinite(fitness)
        return {"status": JobStatus.DONE if ok else JobStatus.FAILED,
                "fitness": fitness if ok else None, "metrics": metrics,
                "error": "" if ok else "fitness function returned a non-finite value"}
    dataset = _job_dataset(job) if job.data is not None else job.dataset
    record = train(act, dataset, model=_resolve(job.model), config=TrainConfig(**job.train),
                   seed=job.seed, device=job.device, split=job.split, data_dir=job.data_dir,
                   verify=job.verify, download=job.download, val_size=job.val_size,
                   test_size=job.test_size)
    metrics = record.to_dict()
    if record.status in ("ok", "chance"):
        return {"status": JobStatus.DONE, "fitness": record.accuracy, "metrics": metrics,
                "error": record.reason}
    return {"status": JobStatus.FAILED, "metrics": metrics,
            "error": f"{record.status}: {record.reason}"}
