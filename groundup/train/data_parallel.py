"""Data parallelism over the CPU's cores inside one training step: the batch is cut into row blocks,
each block's forward and backward runs in its own process, and the gradients are combined.

    step = DataParallel(model, count=lambda x, y: (y != IGNORE_INDEX).sum())
    with groundup.parallel.cpu_threads():         # 2 cores: block 0 here, block 1 in a worker process
        opt.zero_grad()
        loss = step(x, y)                         # float: the whole batch's loss; p.grad as for one pass
        opt.step()

Why processes: a small model's step is hundreds of short NumPy calls on small arrays, and two Python
threads pass the GIL back and forth around each of them (measured: slower than one thread). A
process has its own interpreter. The workers are ``groundup.parallel``'s (forked once per
``cpu_threads`` context); each keeps a replica of the model, sent once, and receives the current
parameter values and its block of the batch every step, through shared memory.

Exact, not approximate: for a loss that is a mean over counted items (rows by default; pass
``count`` for tokens that are not padding, labelled positions, ...), the whole batch's loss is
sum_b count_b * loss_b / sum_b count_b, and its gradient the same weighted sum of the blocks'
gradients. The results equal one pass over the whole batch up to float rounding (tested). Rows must
not interact (BatchNorm in training mode is refused). With dropout, each block draws its masks from
a generator seeded from the global one, so a run is reproducible, but its masks differ from a
single-process run's.

Outside ``cpu_threads`` (or with one thread, or on the GPU) a call is an ordinary forward and backward.
"""

from __future__ import annotations

import itertools
import os
import pickle
from collections.abc import Callable
from typing import Any

import numpy as np

from groundup import random as gu_random
from groundup.nn.module import Module
from groundup.parallel import chunks, cpu_threads, worker_processes
from groundup.tensor import Tensor, enable_grad

__all__ = ["DataParallel"]

_KEYS = itertools.count()


def _rows(*batch: Any) -> int:
    return int(batch[0].shape[0])


class DataParallel:
    """One training step's forward and backward split over worker processes by rows of the batch.

    Args:
        model: the Module to train (its parameters receive the combined gradients in ``.grad``).
        loss: name of the model's method that returns the mean loss of a batch (default ``"loss"``);
            it is called as ``getattr(model, loss)(*batch)``, with the arrays given to the call.
        count: ``count(*block) -> number``: how many items the loss averages over in a block (default:
            its rows). A block with count 0 is skipped.

    Calling it with the batch's arrays (every array's first axis is the row axis) adds the batch's
    gradient into each parameter's ``.grad`` (as ``loss.backward()`` does) and returns the loss as a float.
    """

    def __init__(self, model: Module, loss: str = "loss", count: Callable[..., Any] | None = None):
        if not isinstance(model, Module):
            raise TypeError(f"DataParallel: model must be a groundup Module, got {type(model).__name__}")
        if not callable(getattr(model, loss, None)):
            raise AttributeError(f"DataParallel: {type(model).__name__} has no method {loss!r}")
        batch_norms = [name for name, m in model.named_modules() if "BatchNorm" in type(m).__name__]
        if batch_norms:
            raise ValueError(f"DataParallel: {type(model).__name__} has BatchNorm layers ({batch_norms[0]}), whose "
                             f"statistics couple the rows of a batch; it cannot be split by rows")
        self.model, self.loss_name, self.count = model, loss, count or _rows
        self.key = f"{os.getpid()}:{next(_KEYS)}"
        self._sent: set[int] = set()                     # pids of the workers that hold the replica

    def __call__(self, *batch: Any) -> float:
        arrays = [a.data if isinstance(a, Tensor) else np.asarray(a) for a in batch]
        if not arrays or any(a.ndim == 0 or a.shape[0] != arrays[0].shape[0] for a in arrays):
            raise ValueError(f"DataParallel: every array of the batch needs the same first (row) axis, got "
                             f"shapes {[tuple(a.shape) for a in arrays]}")
        wrap = [isinstance(a, Tensor) for a in batch]   # items the loss takes as Tensors (not raw arrays)
        params = [p for p in self.model.parameters() if p.requires_grad]
        on_cpu = all(type(a) is np.ndarray for a in arrays) and all(type(p.data) is np.ndarray for p in params)
        workers = worker_processes() if on_cpu else []
        parts = chunks(arrays[0].shape[0], on_cpu=on_cpu)[:len(workers) + 1]
        blocks = [[a[part] for a in arrays] for part in parts]
        counts = [float(self.count(*block)) for block in blocks]
        if len(parts) < 2 or sum(c > 0 for c in counts) < 2:
            return self._block(batch, 1.0)
        weights = [c / sum(counts) for c in counts]
        seeds = [int(s) for s in gu_random.generator().integers(0, 2**63, len(parts))]
        requests = [{f"b{k}": a for k, a in enumerate(block)} | {f"p{j}": p.data for j, p in enumerate(params)}
                    for block in blocks[1:]]
        if not all(w.fits(r) for w, r in zip(workers, requests)):
            return self._block(batch, 1.0)
        meta = {"key": self.key, "loss": self.loss_name, "training": self.model.training, "wrap": wrap}
        remote = [(w, r, i) for i, (w, r) in enumerate(zip(workers, requests), start=1) if counts[i] > 0]
        for worker, request, i in remote:                # blocks 1.. start in the workers
            model = self._pickled() if worker.proc.pid not in self._sent else None
            worker.submit(f"{__name__}:_replica_step", request,
                          meta | {"seed": seeds[i], "weight": weights[i], "model": model})
            self._sent.add(worker.proc.pid)
        earlier = [p.grad for p in params]               # backward accumulates: keep what was there
        for p in params:
            p.grad = None
        loss, error, results = 0.0, None, []
        try:
            if counts[0] > 0:                            # block 0 here meanwhile
                items = [Tensor(a) if w else a for a, w in zip(blocks[0], wrap)]
                with cpu_threads(1), gu_random.fork_rng(seeds[0]):   # the model's own splitting stays off
                    loss = self._block(items, weights[0])
        except BaseException as err:                     # noqa: BLE001 - re-raised below, once the workers answered
            error = err
        for worker, _, _ in remote:                      # every worker's answer is collected, even after an error
            try:
                results.append(worker.result())
            except RuntimeError as err:
                error = error or err
        if error is not None:
            for p, g in zip(params, earlier):
                p.grad = g
            raise error
        for grads, out in results:                       # their gradients come scaled by their weights
            loss += out["loss"]
            for j, p in enumerate(params):
                g = grads.get(f"p{j}")
                if g is None:
                    continue
                if p.grad is None:
                    p.grad = Tensor(g.copy())
                else:
                    p.grad.data += g
        for p, g in zip(params, earlier):
            if g is not None:
                p.grad = g if p.grad is None else Tensor(g.data + p.grad.data)
        return loss

    def _pickled(self) -> bytes:
        try:
            return pickle.dumps(self.model)
        except (pickle.PicklingError, AttributeError, TypeError) as err:
            raise TypeError(f"DataParallel: {type(self.model).__name__} cannot be pickled to send a replica to the "
                            f"worker processes ({err}); define the model's class at module level") from None

    def _block(self, items: Any, weight: float) -> float:
        """Forward and backward of ``items`` here; the gradients it adds are scaled by ``weight``."""
        value = getattr(self.model, self.loss_name)(*items)
        (value * weight if weight != 1.0 else value).backward()
        return weight * float(value.item())


def _replica_step(state: dict[str, Any], arrays: dict[str, Any], meta: dict[str, Any]) -> tuple[dict, dict]:
    """In a worker process: copy the parameters into the replica, run one block's forward and backward."""
    key = ("data_parallel", meta["key"])
    if meta.get("model") is not None:
        model = pickle.loads(meta["model"])
        state[key] = (model, [p for p in model.parameters() if p.requires_grad])
    if key not in state:
        raise RuntimeError("DataParallel worker: no replica of the model was sent to this worker")
    model, params = state[key]
    for j, p in enumerate(params):
        src = arrays[f"p{j}"]
        if src.shape != p.data.shape:
            raise ValueError(f"DataParallel worker: parameter {j} has shape {tuple(src.shape)} in the caller and "
                             f"{tuple(p.data.shape)} in the replica (the model changed after the replica was sent)")
        np.copyto(p.data, src)
        p.grad = None
    model.train(meta["training"])
    block = [np.array(arrays[f"b{k}"]) for k in range(len(meta["wrap"]))]   # writable copies
    block = [Tensor(a) if w else a for a, w in zip(block, meta["wrap"])]
    with enable_grad(), gu_random.fork_rng(meta["seed"]):                   # the worker may have forked in no_grad
        value = getattr(model, meta["loss"])(*block)
        (value * meta["weight"]).backward()
    grads = {f"p{j}": p.grad.data for j, p in enumerate(params) if p.grad is not None}
    return grads, {"loss": meta["weight"] * float(value.item())}
