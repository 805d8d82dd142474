"""groundup.allocator: after ``import groundup`` a step's freed arrays are reused without page faults.

Each case runs in a fresh interpreter, since the policy is the process's. The workload is a training
step's pattern: make eight 2 MB arrays, drop them all, again. Under glibc's defaults the freed heap
is trimmed back to the kernel and every round faults its pages in again (16 MB = 4096 pages);
with the policy the pages stay mapped.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from groundup import allocator

ROUNDS = """
import resource, numpy as np
import groundup, groundup.allocator as A
def rounds(n):
    for _ in range(n):
        arrays = [np.ones(512 * 1024, np.float32) for _ in range(8)]   # 8 x 2 MB, written
        del arrays
rounds(3)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
rounds(10)
print(A.malloc_policy(), (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


def _faults_per_round(policy: str) -> tuple[str, float]:
    env = {**os.environ, allocator.MALLOC_ENV: policy}
    out = subprocess.run([sys.executable, "-c", ROUNDS], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    name, faults = out.stdout.split()
    return name, float(faults)


needs_glibc = pytest.mark.skipif(allocator._glibc() is None, reason="the policy is glibc's mallopt")


@needs_glibc
def test_import_keeps_freed_memory_mapped_and_system_leaves_glibc_alone():
    kept, kept_faults = _faults_per_round("keep")
    system, system_faults = _faults_per_round("system")
    assert (kept, system) == ("kept", "system")
    assert system_faults > 2000, system_faults          # the workload does fault under glibc's defaults
    assert kept_faults < 100, kept_faults               # and not once its freed pages are kept


@needs_glibc
def test_this_process_runs_under_the_policy():
    assert allocator.malloc_policy() == "kept"          # the suite imports groundup with the default


def test_a_bad_policy_name_is_refused_at_import():
    env = {**os.environ, allocator.MALLOC_ENV: "fast"}
    out = subprocess.run([sys.executable, "-c", "import groundup"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode != 0
    assert "GROUNDUP_MALLOC='fast'" in out.stderr and "'keep'" in out.stderr


@pytest.mark.parametrize("kwargs", [{"mmap_threshold": -1}, {"trim_threshold": 1.5}, {"top_pad": "16M"}])
def test_thresholds_must_be_byte_counts(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        allocator.keep_freed_memory(**kwargs)
