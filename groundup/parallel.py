"""Process-wide speed settings for the CPU path, entered and left in one scoped context.

    with groundup.parallel.cpu_threads():       # Trainer.fit, the CLI commands and the roadmap do this
        model.loss(x, y).backward()             # fused GPT ops split the batch over the threads

Outside the context every op runs in the calling thread and changes nothing in the process.
Inside it (CPU only):
  * a pool of ``n - 1`` worker threads; the fused GPT ops split the batch into ``n`` chunks, each
    thread taking its chunk through every block (NumPy releases the GIL in BLAS and ufunc loops,
    so elementwise work that BLAS cannot parallelise uses every core too);
  * NumPy's BLAS on ``n`` threads while one Python thread works (a recurrent scan's small GEMMs, a
    CNN's), and on 1 thread (threadpoolctl) from the first section on where the work is split over
    the pool's threads or the worker processes (``split_work()``: ``parallel_map``, the fused
    GPT stack, ``DataParallel``), because BLAS's spinning idle threads would fight them for the
    cores; ``blas_threads()`` lifts the limit again for single-thread work;
  * glibc's malloc keeps freed blocks for reuse instead of unmapping them, so a training step does
    not pay page faults for the same activations every step;
  * Python's thread switch interval shortened, so a thread waiting for the GIL gets it sooner;
  * where the platform forks (Linux), ``n - 1`` worker processes, started on first use by
    ``worker_processes()``, that the fused GPT stack sends its chunks to (see ``Worker``).
Everything is restored (and the workers stopped) on exit. ``n`` defaults to the usable cores (at most 8), capped by
``OMP_NUM_THREADS`` / ``OPENBLAS_NUM_THREADS`` / ``GROUNDUP_NUM_THREADS`` when set; with n = 1
BLAS runs on one thread and malloc keeps freed blocks inside the block, and nothing else changes
(without threadpoolctl, BLAS keeps its threads). BENCHMARKS.md has what each setting buys.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import itertools
import mmap
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

__all__ = ["cpu_threads", "blas_threads", "split_work", "work_is_split", "num_threads",
           "parallel_map", "chunks", "worker_processes", "Worker"]

# NOTE: the threads hand the GIL back and forth between NumPy calls; Python's default 5 ms switch
# interval makes a thread that wants it wait too long (measured: a baby-GPT step 8% faster at 1 ms).
SWITCH_INTERVAL_S = 0.001

_pool: ThreadPoolExecutor | None = None
_size = 1                                    # threads of the innermost active context (1 = none)
_blas: list[tuple[Any, int]] = []           # (BLAS library controller, its own thread count) in the active context
_blas_wide = 1                               # BLAS threads of the active context while one Python thread works
_procs: dict[str, Any] | None = None         # the active context's worker processes: {"workers": list | None}


def default_threads() -> int:
    """``GROUNDUP_NUM_THREADS`` when set; else the usable cores (at most 8), capped by ``OMP_NUM_THREADS``
    and ``OPENBLAS_NUM_THREADS`` when they are set."""
    def env(var: str) -> int | None:
        value = os.environ.get(var, "").strip()
        return int(value) if value.isdigit() and int(value) > 0 else None

    if env("GROUNDUP_NUM_THREADS"):
        return env("GROUNDUP_NUM_THREADS")  # type: ignore[return-value]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    caps = [c for c in (env("OMP_NUM_THREADS"), env("OPENBLAS_NUM_THREADS")) if c]
    return max(1, min([cores, 8, *caps]))


# glibc mallopt parameters and their defaults (restored on exit)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_MALLOC_DEFAULTS = {_M_TRIM_THRESHOLD: 128 * 1024, _M_MMAP_THRESHOLD: 128 * 1024, _M_MMAP_MAX: 65536}
_MALLOC_KEEP = {_M_MMAP_THRESHOLD: 32 << 20, _M_MMAP_MAX: 0, _M_TRIM_THRESHOLD: 1 << 30}   # inside cpu_threads
_malloc_kept = False                         # the outermost context that set _MALLOC_KEEP restores the defaults


def _mallopt(settings: dict[int, int]) -> bool:
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        for key, value in settings.items():
            libc.mallopt(key, value)
        return True
    except (OSError, AttributeError):                                # not glibc: nothing to tune
        return False


@contextlib.contextmanager
def _keep_freed_memory() -> Iterator[None]:
    """glibc's malloc keeps freed blocks mapped inside the block (the outermost context sets and restores).

    NOTE: by default glibc maps blocks over its mmap threshold (128 KB, raised only as far as the
    largest block freed so far) straight from the kernel and trims the heap's free top back to it, so
    each step's fresh NumPy arrays fault their pages in again, zeroed. Measured 2026-12-03 on the
    2-core Intel Xeon, one core each, BERT's bench step: 2151-5554 minor faults and 4.5-16.9 ms of
    system time a step (of 73-92 ms) without, 3-12 faults with; taking turns in one process, without
    -> with: BERT 77.6 -> 69.0 ms, the LSTM 13.6 -> 9.9 ms, the baby GPT 100.3 -> 76.4 ms.
    """
    global _malloc_kept
    if _malloc_kept:
        yield
        return
    _malloc_kept = _mallopt(_MALLOC_KEEP)
    try:
        yield
    finally:
        if _malloc_kept:
            _mallopt(_MALLOC_DEFAULTS)
            _malloc_kept = False


@contextlib.contextmanager
def cpu_threads(n: int | None = None) -> Iterator[int]:
    """Run the CPU path on ``n`` threads inside the block (see the module docstring); yields n.

    Nested contexts keep the outer one's settings unless they name another ``n``.
    """
    global _pool, _size, _blas, _procs, _blas_wide
    if n is None and _size > 1:
        yield _size
        return
    n = default_threads() if n is None else int(n)
    if n < 1:
        raise ValueError(f"cpu_threads: n must be >= 1, got {n}")
    if importlib.util.find_spec("threadpoolctl") is None:           # cannot limit BLAS: stay single-threaded
        n = 1
    if n == 1:
        split_work()                                                 # inside an outer context: BLAS on 1 thread
        saved = (_pool, _size, _blas, _procs, _blas_wide)
        # NOTE: at the top level BLAS would otherwise keep its own thread count (OpenBLAS: the cores), so
        # that "one thread" still ran its GEMMs on every core: a single-core race (`groundup bench
        # --threads 1`) or GROUNDUP_NUM_THREADS=1 must mean one core.
        libs = [] if saved[2] else _blas_libs()
        _set_blas(libs, 1)
        _pool, _size, _blas, _procs, _blas_wide = None, 1, [], None, 1
        try:
            with _keep_freed_memory():
                yield 1
        finally:
            _pool, _size, _blas, _procs, _blas_wide = saved
            _restore_blas(libs)
        return
    saved = (_pool, _size, _blas, _procs, _blas_wide)
    libs = _blas_libs()
    _set_blas(libs, n)
    pool = ThreadPoolExecutor(n - 1, thread_name_prefix="groundup-cpu")
    procs: dict[str, Any] = {"workers": None}
    _pool, _size, _blas, _procs, _blas_wide = pool, n, libs, procs, n
    interval = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    try:
        with _keep_freed_memory():                                   # the workers fork with it set
            yield n
    finally:
        _pool, _size, _blas, _procs, _blas_wide = saved
        for worker in procs["workers"] or []:
            worker.stop()
        sys.setswitchinterval(interval)
        pool.shutdown(wait=True)
        _restore_blas(libs)


def _blas_libs() -> list[tuple[Any, int]]:
    """(BLAS library controller, its own thread count) for each BLAS NumPy has loaded; [] without threadpoolctl."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return []
    return [(lib, lib.num_threads) for lib in ThreadpoolController().select(user_api="blas").lib_controllers]


def _restore_blas(libs: list[tuple[Any, int]]) -> None:
    for lib, own in libs:
        lib.set_num_threads(own)


def _set_blas(libs: list[tuple[Any, int]], threads: int) -> None:
    for lib, own in libs:                                            # never above the library's own count
        lib.set_num_threads(min(threads, own))


def split_work() -> None:
    """Inside ``cpu_threads``: from here on, BLAS on one thread (other Python threads or worker
    processes are about to share the cores with this one).

    NOTE: one-way, for the rest of the context. BLAS's idle threads spin for a while after each call
    (OpenBLAS: about 0.1 s) and take the cores from the threads and processes that work meanwhile:
    measured on 2 cores, a BERT step that splits its batch ran 1.6x slower with BLAS on 2 threads
    outside the split sections, while the recurrent models, which never split, gain 1.15-1.2x from
    BLAS on 2 threads. A model that splits its work once keeps splitting, so the first split decides.
    NOTE: the first split comes at the start of a training step (the fused stack, ``DataParallel``),
    before any GEMM, so every step of a run, a resumed one included, runs its GEMMs on the same
    number of BLAS threads: OpenBLAS's results can differ in the last bits between 1 and 2 threads.
    (The optimizer shares its update out only once the work is split: ``work_is_split``.)
    """
    global _blas_wide
    if _blas and _blas_wide != 1:
        _blas_wide = 1
        _set_blas(_blas, 1)


def work_is_split() -> bool:
    """Whether the active ``cpu_threads`` context has split work over threads or processes
    (``split_work``), so that BLAS runs on one thread from then on."""
    return _size > 1 and _blas_wide == 1


@contextlib.contextmanager
def blas_threads() -> Iterator[None]:
    """Inside ``cpu_threads``, BLAS on the context's threads for the block, also after a
    ``split_work`` (for work that runs in one Python thread)."""
    if not _blas or _blas_wide == _size:
        yield
        return
    libs, size = _blas, _size
    _set_blas(libs, size)
    try:
        yield
    finally:
        _set_blas(libs, _blas_wide)


def num_threads() -> int:
    """Threads of the active ``cpu_threads`` context (1 outside any)."""
    return _size


def chunks(batch: int, on_cpu: bool = True) -> list[slice]:
    """Split ``batch`` rows into one contiguous slice per thread (one slice on the GPU or outside a context)."""
    n = min(_size, batch) if on_cpu else 1
    n = max(n, 1)
    bounds = [round(i * batch / n) for i in range(n + 1)]
    return [slice(bounds[i], bounds[i + 1]) for i in range(n)]


def parallel_map(fn: Callable[..., Any], *arg_lists: Sequence[Any]) -> list[Any]:
    """``[fn(*args) for args in zip(*arg_lists)]`` with the jobs spread over the context's threads.

    The calling thread works too (it would otherwise only wait); each thread takes the next job
    until none is left. A single job runs with BLAS's own threads.
    """
    jobs = list(zip(*arg_lists))
    if len(jobs) == 1:
        with blas_threads():
            return [fn(*jobs[0])]
    if _pool is None or len(jobs) == 0:
        return [fn(*args) for args in jobs]
    results: list[Any] = [None] * len(jobs)
    order = itertools.count()                # next() on a count is atomic under the GIL

    def drain() -> None:
        for i in iter(order.__next__, None):
            if i >= len(jobs):
                return
            results[i] = fn(*jobs[i])

    split_work()
    helpers = [_pool.submit(drain) for _ in range(min(_size - 1, len(jobs) - 1))]
    drain()
    for helper in helpers:
        helper.result()
    return results


# ----------------------------------------------------------------------------- worker processes
# NOTE: why processes. Two Python threads hand the GIL to each other around every NumPy call, and a
# GPT chunk makes hundreds of short calls, so the threads wait for each other: measured on 2 cores,
# two processes each run a baby-GPT half-batch step as fast as one process alone, two threads do not.
# A worker is forked (it inherits the loaded modules and the BLAS limit), reads its inputs from
# and writes its outputs to shared anonymous memory, and keeps whatever state its functions keep
# (a chunk's saved activations) between calls.
_ARENA_IN, _ARENA_OUT = 1 << 30, 1 << 29     # bytes of address space per worker (touched only as used)
_ALIGN = 64
_MAP_NORESERVE = 0x4000 if sys.platform.startswith("linux") else 0


class Worker:
    """One forked worker process: ``submit(fn, arrays, meta, region)`` then ``result()``, one call at a time.

    ``fn`` is "module:function"; the worker calls ``function(state, arrays, meta)`` with ``arrays``
    as read-only views of the shared input arena and ``state`` a dict that persists in the worker;
    it returns (dict of arrays, meta), copied to the output arena (except arrays it made with
    ``state["alloc"](shape, dtype)``, which are there already). The input arena has ``REGIONS``
    regions: a call's inputs stay valid in the worker until the caller writes to that region again
    (so a worker may keep views of them instead of copies). ``result()`` gives views of the output
    arena, valid until the next ``submit``.
    """

    REGIONS = 3

    def __init__(self) -> None:
        import multiprocessing

        flags = mmap.MAP_SHARED | mmap.MAP_ANONYMOUS | _MAP_NORESERVE
        self.arena_in, self.arena_out = mmap.mmap(-1, _ARENA_IN, flags=flags), mmap.mmap(-1, _ARENA_OUT, flags=flags)
        ctx = multiprocessing.get_context("fork")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, self.arena_in, self.arena_out), daemon=True,
                                name="groundup-worker")
        with warnings.catch_warnings():                      # 3.12+ warns on fork with threads: the child only
            warnings.simplefilter("ignore", DeprecationWarning)  # runs NumPy code, never the parent's threads
            self.proc.start()
        child.close()
        self.pending = False

    def fits(self, arrays: dict[str, Any]) -> bool:
        return sum(a.nbytes + _ALIGN for a in arrays.values()) <= _ARENA_IN // self.REGIONS

    def submit(self, fn: str, arrays: dict[str, Any], meta: dict[str, Any], region: int = 0) -> None:
        import numpy as np

        if self.pending:
            raise RuntimeError("Worker.submit: the previous call's result was not collected")
        if not self.fits(arrays):
            raise MemoryError("Worker.submit: the inputs do not fit an arena region (check fits() first)")
        specs, offset = {}, region * (_ARENA_IN // self.REGIONS)
        for name, a in arrays.items():
            view = np.ndarray(a.shape, a.dtype, buffer=self.arena_in, offset=offset)
            view[...] = a
            specs[name] = (offset, a.shape, a.dtype.str)
            offset += -(-a.nbytes // _ALIGN) * _ALIGN
        self.conn.send((fn, specs, meta))
        self.pending = True

    def result(self) -> tuple[dict[str, Any], dict[str, Any]]:
        import numpy as np

        self.pending = False
        try:
            status, specs, meta = self.conn.recv()
        except (EOFError, OSError) as exc:
            raise RuntimeError(f"groundup worker process {self.proc.pid} exited "
                               f"(exit code {self.proc.exitcode})") from exc
        if status != "ok":
            raise RuntimeError(f"groundup worker process failed:\n{meta}")
        return {name: np.ndarray(shape, dtype, buffer=self.arena_out, offset=off)
                for name, (off, shape, dtype) in specs.items()}, meta

    def call(self, fn: str, arrays: dict[str, Any], meta: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        self.submit(fn, arrays, meta)
        return self.result()

    def stop(self) -> None:
        with contextlib.suppress(OSError, BrokenPipeError):
            self.conn.send(None)
        self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join()
        self.conn.close()
        for arena in (self.arena_in, self.arena_out):
            with contextlib.suppress(BufferError):           # views still alive: unmapped when they go
                arena.close()


def _worker_main(conn: Any, arena_in: Any, arena_out: Any) -> None:
    """The worker's loop: one call per message until None or the pipe closes.

    Ctrl-C reaches the whole process group: the worker ignores it and the parent decides (the parent
    stops its workers when it leaves ``cpu_threads``, however it leaves; its SIGINT handler, forked in
    here, would otherwise run twice, or kill the worker mid-call with a traceback)."""
    import signal

    import numpy as np

    signal.signal(signal.SIGINT, signal.SIG_IGN)

    global _pool, _size, _blas, _procs, _blas_wide
    _pool, _size, _blas, _procs, _blas_wide = None, 1, [], None, 1   # the parent's threads are not here
    _limit_blas_to_one()                                     # the parent and the other workers use the other cores
    state: dict[str, Any] = {}
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        fn_name, specs, meta = msg
        made: dict[int, int] = {}                            # id of an array made in the output arena -> offset
        top = [0]

        def alloc(shape: Any, dtype: Any, made: dict[int, int] = made, top: list[int] = top) -> Any:
            dtype = np.dtype(dtype)
            nbytes = int(np.prod(shape)) * dtype.itemsize
            if top[0] + nbytes > _ARENA_OUT:
                raise MemoryError(f"worker output {tuple(shape)} does not fit the output arena")
            view = np.ndarray(shape, dtype, buffer=arena_out, offset=top[0])
            made[id(view)] = top[0]
            top[0] += -(-nbytes // _ALIGN) * _ALIGN
            return view

        state["alloc"] = alloc
        try:
            module, _, attr = fn_name.partition(":")
            fn = getattr(importlib.import_module(module), attr)
            arrays = {}
            for name, (off, shape, dtype) in specs.items():
                view = np.ndarray(shape, dtype, buffer=arena_in, offset=off)
                view.flags.writeable = False
                arrays[name] = view
            out, out_meta = fn(state, arrays, meta)
            out_specs = {}
            for name, a in out.items():
                a = np.asarray(a)
                if id(a) not in made:
                    view = alloc(a.shape, a.dtype)
                    view[...] = a
                    a = view
                out_specs[name] = (made[id(a)], a.shape, a.dtype.str)
            conn.send(("ok", out_specs, out_meta))
        except Exception:                                    # reported to the caller, who raises
            conn.send(("error", {}, traceback.format_exc()))


def _limit_blas_to_one() -> None:
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return
    for lib in ThreadpoolController().select(user_api="blas").lib_controllers:
        lib.set_num_threads(1)


def worker_processes() -> list[Worker]:
    """Inside ``cpu_threads(n)`` with n > 1 where processes fork: its n - 1 workers (started on the
    first call); elsewhere an empty list (callers then use ``parallel_map``)."""
    if _procs is None or not hasattr(os, "fork") or sys.platform != "linux":
        return []
    if _procs["workers"] is None:
        _procs["workers"] = []
        try:
            for _ in range(_size - 1):
                _procs["workers"].append(Worker())
        except (OSError, ValueError):                        # no shared memory to map: stay with threads
            for worker in _procs["workers"]:
                worker.stop()
            _procs["workers"] = []
    return _procs["workers"]
