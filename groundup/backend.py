"""The array backend: NumPy on the CPU, CuPy on a CUDA GPU.

Every op in groundup is written once against ``xp``, the array module of its inputs
(``numpy`` or ``cupy``), so the same code runs on both devices. CuPy is optional and
imported only when a tensor is moved to ``"cuda"``.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

_cupy: ModuleType | None = None
_cupy_checked = False


def cupy_or_none() -> ModuleType | None:
    """Return the ``cupy`` module if it is installed and sees a GPU, else None."""
    global _cupy, _cupy_checked
    if not _cupy_checked:
        _cupy_checked = True
        try:
            import cupy

            if cupy.cuda.runtime.getDeviceCount() > 0:
                _cupy = cupy
        except Exception:  # noqa: BLE001 - any failure means "no usable GPU"
            _cupy = None
    return _cupy


def cuda_is_available() -> bool:
    """True when CuPy is installed and a CUDA device is visible."""
    return cupy_or_none() is not None


def array_module(*arrays: Any) -> ModuleType:
    """The array module (numpy or cupy) of the given arrays."""
    for a in arrays:
        if type(a).__module__.startswith("cupy"):
            return cupy_or_none()  # type: ignore[return-value]
    return np


def device_of(array: Any) -> str:
    """``"cuda"`` for a CuPy array, ``"cpu"`` otherwise."""
    return "cuda" if type(array).__module__.startswith("cupy") else "cpu"


def normalize_device(device: Any) -> str:
    """Map ``"cpu"``, ``"cuda"``, ``"cuda:0"`` or a device object to ``"cpu"`` / ``"cuda"``."""
    name = str(device if device is not None else "cpu")
    if name == "cpu":
        return "cpu"
    if name.startswith("cuda"):
        return "cuda"
    raise ValueError(f"unknown device {device!r}: expected 'cpu' or 'cuda'")


def to_device(array: Any, device: str) -> Any:
    """Copy ``array`` to ``device`` (a no-op when it is already there)."""
    device = normalize_device(device)
    if device == device_of(array):
        return array
    if device == "cuda":
        cp = cupy_or_none()
        if cp is None:
            raise RuntimeError("device 'cuda' requested but CuPy with a CUDA GPU is not available "
                               "(pip install 'groundup[gpu]')")
        return cp.asarray(array)
    return array.get()


def to_numpy(array: Any) -> np.ndarray:
    """A NumPy array with the values of ``array`` (copied from the GPU if needed)."""
    return array.get() if device_of(array) == "cuda" else np.asarray(array)


# dtypes: groundup uses NumPy's dtype objects directly, under torch's names.
float32 = np.dtype(np.float32)
float64 = np.dtype(np.float64)
float16 = np.dtype(np.float16)
int64 = np.dtype(np.int64)
int32 = np.dtype(np.int32)
bool_ = np.dtype(np.bool_)
DEFAULT_FLOAT = float32

_DTYPE_NAMES = {
    "float32": float32, "float": float32, "float64": float64, "double": float64,
    "float16": float16, "half": float16, "int64": int64, "long": int64, "int32": int32,
    "int": int32, "bool": bool_,
}


def as_dtype(dtype: Any) -> np.dtype:
    """Accept a NumPy dtype, a Python type, a torch-style name or a torch dtype."""
    if dtype is None:
        raise ValueError("dtype is None")
    if isinstance(dtype, str):
        key = dtype.removeprefix("torch.")
        if key not in _DTYPE_NAMES:
            raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(_DTYPE_NAMES)}")
        return _DTYPE_NAMES[key]
    if type(dtype).__module__ == "torch":
        return as_dtype(str(dtype))
    if dtype is float:
        return float32
    if dtype is int:
        return int64
    if dtype is bool:
        return bool_
    return np.dtype(dtype)


def erf(x: Any) -> Any:
    """The error function, elementwise, on NumPy or CuPy arrays.

    NumPy has no ``erf``; SciPy's (installed with scikit-learn) is used when present, else
    Python's ``math.erf`` elementwise (exact but slower). CuPy uses ``cupyx.scipy.special``.
    """
    if device_of(x) == "cuda":
        from cupyx.scipy.special import erf as cupy_erf

        return cupy_erf(x)
    try:
        from scipy.special import erf as scipy_erf
    except ImportError:  # pragma: no cover - scipy ships with scikit-learn
        import math

        return np.frompyfunc(math.erf, 1, 1)(x).astype(x.dtype)
    return scipy_erf(x).astype(x.dtype, copy=False)
