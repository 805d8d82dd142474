"""What the benches record about the machine's linear algebra: which BLAS kernels NumPy runs and
which instruction set PyTorch uses, and a loud line when the two are not on equal terms.

NumPy's OpenBLAS picks its kernel set when it loads, from the CPU or from ``OPENBLAS_CORETYPE``.
Some machines set that variable to an older kernel set (``Haswell``, AVX2) because older OpenBLAS
builds go wrong on their processors; a current NumPy then runs its single-precision GEMMs at about
half the speed the CPU's AVX-512 kernels reach, while PyTorch's MKL and oneDNN use AVX-512 anyway.
A ratio measured so compares groundup's maths on AVX2 with PyTorch's on AVX-512: the bench says so.
To compare at the machine's best, run the bench with the variable unset for that command alone:
``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE groundup bench all`` (and leave tests and CI as
the machine has them).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

# NOTE: after its last call a library's idle threads spin before they sleep: OpenBLAS's for 2^28 TSC
# cycles (about 0.1 s at 2.6 GHz), OpenMP's (PyTorch's) for a shorter while. In a bench where two
# contenders take turns in one process, the one whose turn comes next loses a core to the spinning
# threads of the other: measured on 2 cores, PyTorch's RNN step 6.2 ms right after groundup's steps
# (BLAS on 2 threads), 4.0 ms after a 20 ms pause, 2.2-2.8 ms after 50-300 ms, 2.0 ms alone. So each
# turn starts after IDLE_THREADS_S of sleep, and each contender runs as on a machine the other has left.
IDLE_THREADS_S = 0.15
AVX512_BLAS_CORES = ("skylakex", "cooperlake", "sapphirerapids", "zen4", "zen5")


# NOTE: PyTorch's fastest Adam and AdamW on the CPU are the fused ones (``fused=True``, one kernel
# for the whole update); its default on CPU tensors is the per-parameter loop. Measured 2026-12-03 on
# the 2-core Intel Xeon, one AdamW step: the baby GPT's 810k parameters 5.28 ms (loop), 5.88 ms
# (foreach), 1.63 ms (fused) on one thread, 5.13 / 5.20 / 1.12 ms on two; the LSTM LM's 0.68 / 0.73 /
# 0.30 ms; the MLP's 0.22 / 0.32 / 0.08 ms. Clipping's default (foreach where supported) was already
# the fastest. So every PyTorch contender's optimizer is built with this.
TORCH_OPTIMIZER_KWARGS = {"fused": True}


def torch_optimizer(torch: Any, name: str, params: Any, **kwargs: Any) -> Any:
    """``torch.optim.<name>`` (``"Adam"`` or ``"AdamW"``) at PyTorch's best on the CPU (``TORCH_OPTIMIZER_KWARGS``)."""
    return getattr(torch.optim, name)(params, **kwargs, **TORCH_OPTIMIZER_KWARGS)


def optimizer_note() -> str:
    """How the PyTorch contenders' Adam / AdamW are built, as the table's header says it."""
    return "Adam/AdamW(" + ", ".join(f"{k}={v}" for k, v in TORCH_OPTIMIZER_KWARGS.items()) + ")"


def cpu_flags(cpuinfo_path: str = "/proc/cpuinfo") -> set[str]:
    """The first processor's feature flags (empty where /proc/cpuinfo is missing)."""
    try:
        for line in Path(cpuinfo_path).read_text(errors="replace").splitlines():
            if line.startswith("flags"):
                return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def blas_facts(torch: Any | None = None) -> dict[str, Any]:
    """NumPy's BLAS (library, version, kernel set), ``OPENBLAS_CORETYPE`` if set, whether the CPU
    has AVX-512, how PyTorch's optimizers are built, and PyTorch's CPU capability when ``torch`` is given."""
    facts: dict[str, Any] = {"numpy_blas": "unknown", "openblas_coretype_env": os.environ.get("OPENBLAS_CORETYPE"),
                             "cpu_avx512": "avx512f" in cpu_flags(), "torch_optimizer": optimizer_note()}
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        threadpool_info = None
    for lib in threadpool_info() if threadpool_info else []:
        if lib.get("user_api") == "blas":
            facts["numpy_blas"] = f"{lib.get('internal_api')} {lib.get('version')} {lib.get('architecture')}"
            facts["numpy_blas_arch"] = lib.get("architecture")
            break
    if torch is not None:
        try:
            facts["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        except AttributeError:
            pass
    return facts


def blas_warning(facts: dict[str, Any]) -> str | None:
    """A loud line when NumPy's BLAS runs kernels below the CPU's instruction set because
    ``OPENBLAS_CORETYPE`` says so, or None."""
    arch = (facts.get("numpy_blas_arch") or "").lower()
    if not facts.get("cpu_avx512") or not arch or arch in AVX512_BLAS_CORES:
        return None
    forced = facts.get("openblas_coretype_env")
    why = f"OPENBLAS_CORETYPE={forced} pins" if forced else "OpenBLAS chose"
    return (f"WARNING: {why} NumPy's BLAS to its {facts['numpy_blas_arch']} kernels on a CPU with AVX-512 "
            f"(PyTorch: {facts.get('torch_cpu_capability', '?')}), so groundup's GEMMs run at about half the "
            f"machine's speed; for ratios at the machine's best run this command with "
            f"`env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE`")


def let_idle_threads_sleep(seconds: float = IDLE_THREADS_S) -> None:
    """Sleep until the other contender's idle BLAS / OpenMP threads have stopped spinning (see the NOTE)."""
    if seconds > 0:
        time.sleep(seconds)


# ----------------------------------------------------------------------------- other processes
def cpu_seconds() -> tuple[float, float] | None:
    """(CPU seconds every process on the machine has used, those this process and its finished
    children have used), from /proc/stat (Linux; steal time counts: another VM had the core); or None."""
    import resource

    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    busy = (sum(fields[:3]) + sum(fields[5:8])) / os.sysconf("SC_CLK_TCK")   # user nice system irq softirq steal
    own = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for f in ("ru_utime", "ru_stime"))
    return busy, own


def other_cores(before: tuple[float, float] | None, after: tuple[float, float] | None, wall_s: float) -> float | None:
    """Cores that processes other than the bench (and its worker processes) kept busy between two
    ``cpu_seconds()`` readings; None where unknown."""
    if before is None or after is None or wall_s <= 0:
        return None
    return max(0.0, ((after[0] - before[0]) - (after[1] - before[1])) / wall_s)


OTHERS_LIMIT = 0.25                             # cores used by other processes above which a ratio is unreliable
