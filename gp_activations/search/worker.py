"""What runs inside a worker: one evaluation, plain data in and plain data out.

A task is a dict of strings and numbers (the expression travels as text, the task's model,
data or fitness function as ``module:function`` references), so every executor -- in-process,
a spawned process, a Ray task -- runs exactly the same code.  The result is a dict as well;
no DEAP individual, tensor or activation object crosses a process boundary.
"""

from __future__ import annotations

import math
import os
import time

from ..errors import UserError
from ..references import resolve_reference

def _resolve(value):
    return resolve_reference(value) if isinstance(value, str) and ":" in value else value


_DATASETS: dict = {}


def _task_dataset(task: dict):
    """A user's data (a reference, loader, tensors or torch datasets), built once per process."""
    from ..data import as_dataset

    source = task["data"]
    key = source if isinstance(source, str) else id(source)
    if key not in _DATASETS:
        _DATASETS[key] = as_dataset(_resolve(source), name=task.get("dataset") or "custom")
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


def prepare(task: dict) -> None:
    """Load what every task of a run shares (its dataset, torch's lazy imports) ahead of the first
    task, so that a worker's start-up overlaps the driver's work instead of the first evaluation."""
    try:
        if task.get("lookup"):
            from ..tabular import load_table

            load_table(task["lookup"])
        elif task.get("fitness"):
            _resolve(task["fitness"])
        elif task.get("data") is not None:
            _task_dataset(task)
        else:
            from ..train import get_dataset, resolve_device

            get_dataset(task["dataset"], resolve_device(task.get("device", "cpu")),
                        data_dir=task.get("data_dir"), download=task.get("download", False),
                        verify=task.get("verify", True))
    except Exception:  # noqa: BLE001 -- the first real task reports the problem
        pass
    # A process's first torch.optim optimizer imports torch._dynamo (about 1.7 s here): pay it
    # now, not inside the first candidate's training time.
    import torch

    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)


def evaluate_task(task: dict) -> dict:
    """Train (or call the user's fitness on) one candidate; never raises."""
    started = time.time()
    result = {"id": task["id"], "status": "failed", "fitness": None, "metrics": None,
              "error": "", "started_at": started, "finished_at": None, "pid": os.getpid()}
    try:
        import torch

        from ..activation import Activation
        from ..train import TrainConfig, train

        if task.get("threads"):
            torch.set_num_threads(int(task["threads"]))
        act = Activation.from_string(task["expression"], task["primitives"], task["params"])
        if task.get("lookup"):  # a tabular benchmark: the training was done when it was built
            from ..tabular import lookup_task

            result.update(lookup_task(task))
        elif task.get("fitness"):
            fn = _resolve(task["fitness"])
            value = fn(act, seed=task["seed"])
            # numpy / torch scalars are common return values: stored as plain JSON numbers
            metrics = _plain_json(value if isinstance(value, dict) else {"fitness": value})
            fitness = float(metrics.get("fitness", metrics.get("accuracy", float("nan"))))
            ok = math.isfinite(fitness)
            result.update(status="done" if ok else "failed", fitness=fitness if ok else None,
                          metrics=metrics, error="" if ok else "fitness function returned a non-finite value")
        else:
            dataset = _task_dataset(task) if task.get("data") is not None else task["dataset"]
            record = train(act, dataset, model=_resolve(task.get("model")),
                           config=TrainConfig(**task["train"]), seed=task["seed"],
                           device=task.get("device", "cpu"), split=task.get("split", "val"),
                           data_dir=task.get("data_dir"), verify=task.get("verify", True),
                           download=task.get("download", False))
            metrics = record.to_dict()
            if record.status in ("ok", "chance"):
                result.update(status="done", fitness=record.accuracy, metrics=metrics,
                              error=record.reason)
            else:
                result.update(status="failed", metrics=metrics,
                              error=f"{record.status}: {record.reason}")
    except UserError as exc:
        result["error"] = f"bad task: {exc}"
    except Exception as exc:  # noqa: BLE001 -- the search goes on
        result["error"] = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
    result["finished_at"] = time.time()
    return result
