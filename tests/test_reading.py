"""READING.md, the reading order of the engine, stays true: its line counts are measured from the
code (so a change that lengthens the path shows up here), its example runs and gives the gradients
it states, and the README links it."""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path

import numpy as np

import groundup as gu

ROOT = Path(__file__).resolve().parents[1]
READING = (ROOT / "READING.md").read_text(encoding="utf-8")
STEP_ROW = re.compile(r"^\| (\d+) \| `([\w/]+\.py)` \| (.+?) \| (\d+) \|$", re.M)
FILE_ROW = re.compile(r"^\| [^|]+ \| `([\w/]+\.py)` \| (\d+) lines \|$", re.M)


def source_lines(path: str, qualname: str) -> int:
    module = sys.modules.get(path.removesuffix(".py").replace("/", ".")) or importlib.import_module(
        path.removesuffix(".py").replace("/", "."))
    obj = module
    for part in qualname.split("."):
        obj = getattr(obj, part)
    where = inspect.getsourcefile(obj) or ""
    assert Path(where).as_posix().endswith(path), f"READING.md: {qualname} is defined in {where}, not in {path}"
    return len(inspect.getsourcelines(obj)[0])


def test_the_line_counts_of_the_reading_path_are_measured() -> None:
    rows = STEP_ROW.findall(READING)
    assert len(rows) >= 10
    for step, path, names, count in rows:
        measured = sum(source_lines(path, name) for name in re.findall(r"`([\w.]+)`", names))
        assert measured == int(count), f"READING.md step {step}: {names} is {measured} lines, not {count}"
    path_steps = [r for r in rows if int(r[0]) <= 8]
    total, files = sum(int(r[3]) for r in path_steps), {r[1] for r in path_steps}
    assert f"{total} lines in {len(files)} files" in READING


def test_the_file_sizes_are_about_right() -> None:
    for path, count in FILE_ROW.findall(READING):
        lines = len((ROOT / path).read_text(encoding="utf-8").splitlines())
        assert abs(lines - int(count)) <= 0.25 * lines, f"{path} has {lines} lines, READING.md says about {count}"


def test_the_example_gives_the_gradients_it_states() -> None:
    x = gu.tensor([1.0, 2.0, 3.0], requires_grad=True)
    y = gu.tensor([[10.0], [20.0]], requires_grad=True)
    z = x * y
    z.sum().backward()
    assert z.shape == (2, 3)
    np.testing.assert_allclose(x.grad.numpy(), [30.0, 30.0, 30.0])
    np.testing.assert_allclose(y.grad.numpy(), [[6.0], [6.0]])
    assert "tensor([30., 30., 30.]), tensor([[6.], [6.]])" in READING


def test_the_readme_links_the_reading_order() -> None:
    assert "(READING.md)" in (ROOT / "README.md").read_text(encoding="utf-8")
