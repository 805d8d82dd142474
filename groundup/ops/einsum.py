"""Einstein summation: ``groundup.einsum("ij,jk->ik", a, b)`` for any number of operands, as one Function.

Each operand is named by a subscript, one letter per dim; a letter in two places means the same
index, a letter missing from the output is summed over, and ``...`` stands for the dims no letter
names (they broadcast, right-aligned, as in torch). Without ``->`` the output is the ellipsis dims
then the letters used once, in alphabetical order (upper case first, as torch). A dim of size 1
broadcasts against the same letter's larger size in another operand, as in torch.

The backward is einsum again: the gradient of operand k contracts the output gradient with the
other operands onto k's letters ("ij,jk->ik" gives "ik,jk->ij" for the first operand). Two cases
need more than that one call: a letter only operand k has (summed out inside k, "ij->i"), along
which the gradient is constant, so it is broadcast; and a letter repeated inside k ("ii->i"), where
only the diagonal was read, so the gradient is written onto the diagonal of zeros.

Reference: torch.einsum and numpy.einsum documentation (the subscript grammar).
"""

from __future__ import annotations

import string
from typing import TYPE_CHECKING, Any

import numpy as np

from groundup.backend import array_module
from groundup.function import Function
from groundup.ops.shaping import is_tensor

if TYPE_CHECKING:
    from groundup.tensor import Tensor


def _contract(subscripts: str, *arrays: Any) -> Any:
    """``xp.einsum`` with NumPy's contraction-order search (BLAS for pairs); CuPy's own otherwise."""
    xp = array_module(*arrays)
    options = {"optimize": True} if xp is np else {}
    return xp.einsum(subscripts, *arrays, **options)


def _split_term(term: str, ndim: int, k: int) -> tuple[str, int]:
    """An operand's letters (``...`` removed) and how many dims its ellipsis covers."""
    if term.count("...") > 1 or "." in term.replace("...", ""):
        raise RuntimeError(f"einsum(): operand {k}'s subscript {term!r} has a '.' that is not one '...'")
    letters = term.replace("...", "")
    if any(c not in string.ascii_letters for c in letters):
        raise RuntimeError(f"einsum(): operand {k}'s subscript {term!r} may hold only letters a-z, A-Z and '...'")
    covered = ndim - len(letters)
    if "..." not in term and covered != 0:
        raise RuntimeError(f"einsum(): operand {k}'s subscript {term!r} names {len(letters)} dims, but the operand "
                           f"has {ndim} (and no '...' to stand for the rest)")
    if covered < 0:
        raise RuntimeError(f"einsum(): operand {k}'s subscript {term!r} names {len(letters)} dims, more than "
                           f"its {ndim}")
    return letters, covered


def parse_equation(equation: str, shapes: list[tuple[int, ...]]) -> tuple[list[str], str, dict[str, int]]:
    """The operands' subscripts and the output's, with each ``...`` spelt out as unused letters, and
    the size of every letter (the largest, where a size-1 dim broadcasts).

    >>> parse_equation("...ij,jk", [(5, 2, 3), (3, 4)])
    (['aij', 'jk'], 'aik', {'a': 5, 'i': 2, 'j': 3, 'k': 4})
    """
    if not isinstance(equation, str):
        raise TypeError(f"einsum(): the equation must be a string such as 'ij,jk->ik', got {equation!r}")
    eq = equation.replace(" ", "")
    if eq.count("->") > 1:
        raise RuntimeError(f"einsum(): the equation {equation!r} has more than one '->'")
    lhs, arrow, output = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(shapes):
        raise RuntimeError(f"einsum(): the equation {equation!r} names {len(terms)} operands, but {len(shapes)} "
                           f"were given")
    split = [_split_term(t, len(s), k) for k, (t, s) in enumerate(zip(terms, shapes))]
    spare = [c for c in string.ascii_letters if c not in eq]
    n_ellipsis = max((covered for t, (_, covered) in zip(terms, split) if "..." in t), default=0)
    if n_ellipsis > len(spare):
        raise RuntimeError(f"einsum(): '...' covers {n_ellipsis} dims, more than the {len(spare)} unused letters")
    ellipsis = "".join(spare[:n_ellipsis])
    terms = [t.replace("...", ellipsis[n_ellipsis - covered:]) for t, (_, covered) in zip(terms, split)]
    if not arrow:
        once = sorted(c for c in set("".join(l for l, _ in split)) if "".join(terms).count(c) == 1)  # A-Z first
        output = ellipsis + "".join(once)
    else:
        named = output.replace("...", "")
        if output.count("...") > 1 or any(c not in string.ascii_letters for c in named):
            raise RuntimeError(f"einsum(): the output subscript {output!r} may hold only letters and one '...'")
        output = output.replace("...", ellipsis)            # no '...' in the output: those dims are summed
        for c in output:
            if output.count(c) > 1:
                raise RuntimeError(f"einsum(): the output subscript of {equation!r} names {c!r} twice")
            if not any(c in t for t in terms):
                raise RuntimeError(f"einsum(): the output subscript of {equation!r} names {c!r}, which no operand has")
    sizes: dict[str, int] = {}
    for k, (term, shape) in enumerate(zip(terms, shapes)):
        mine: dict[str, int] = {}
        for c, n in zip(term, shape):
            if mine.setdefault(c, n) != n:
                raise RuntimeError(f"einsum(): subscript {c!r} is repeated in operand {k} with sizes {mine[c]} and {n}")
            seen = sizes.get(c)
            if seen is None or seen == 1:
                sizes[c] = n
            elif n != 1 and n != seen:
                raise RuntimeError(f"einsum(): subscript {c!r} has size {seen} in one operand and {n} in operand "
                                   f"{k} (sizes must match or be 1); equation {equation!r}, shapes {shapes}")
    return terms, output, sizes


def _to_shape(grad: Any, shape: tuple[int, ...]) -> Any:
    """Sum ``grad`` over the dims where the operand had size 1 and was broadcast up."""
    axes = tuple(a for a, (n, m) in enumerate(zip(shape, grad.shape)) if n == 1 and m != 1)
    return grad.sum(axis=axes, keepdims=True) if axes else grad


class Einsum(Function):
    """out = einsum(equation, *operands); see the module docstring for the backward."""

    def forward(self, *operands, terms: tuple[str, ...] = (), output: str = "", sizes: dict | None = None):
        xp = array_module(*operands)
        full = [xp.broadcast_to(a, tuple(sizes[c] for c in t)) for a, t in zip(operands, terms)]
        self.terms, self.output, self.sizes = terms, output, sizes
        self.shapes = [a.shape for a in operands]
        self.save_for_backward(*full)
        out = _contract(",".join(terms) + "->" + output, *full)
        return xp.asarray(out, dtype=operands[0].dtype)

    def backward(self, gz):
        xp, full, sizes = array_module(gz), self.saved, self.sizes
        grads = []
        for k, term in enumerate(self.terms):
            if not self.needs_input_grad[k]:
                grads.append(None)
                continue
            others = [(t, a) for j, (t, a) in enumerate(zip(self.terms, full)) if j != k]
            labels = "".join(dict.fromkeys(term))                  # term's letters, each once
            present = "".join(c for c in labels if c in self.output or any(c in t for t, _ in others))
            if others or present != self.output:
                subscripts = ",".join([self.output] + [t for t, _ in others]) + "->" + present
                g = _contract(subscripts, gz, *[a for _, a in others])
            else:
                g = gz
            if present != labels:                                 # letters summed inside operand k only
                g = xp.broadcast_to(g.reshape([sizes[c] if c in present else 1 for c in labels]),
                                    [sizes[c] for c in labels])   # (sizes of labels)
            if labels != term:                                    # a repeated letter: only the diagonal was read
                grid = xp.ix_(*[xp.arange(sizes[c]) for c in labels])
                diagonal = xp.zeros([sizes[c] for c in term], dtype=gz.dtype)
                diagonal[tuple(grid[labels.index(c)] for c in term)] = g
                g = diagonal
            grads.append(xp.asarray(_to_shape(g, self.shapes[k]), dtype=gz.dtype))
        return tuple(grads)


def einsum(equation: str, *operands: Any) -> Tensor:
    """Einstein summation over the operands (torch's ``einsum``; a list of operands works too).

    Args:
        equation: subscripts such as ``"ij,jk->ik"``, ``"bhqd,bhkd->bhqk"``, ``"ii->i"`` or ``"...ij->...ji"``.
        operands: one tensor per subscript, all of one dtype.

    >>> import groundup as gu
    >>> gu.einsum("i,i->", gu.tensor([1.0, 2.0]), gu.tensor([3.0, 4.0]))
    tensor(11.)
    """
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    if not operands or not all(is_tensor(o) for o in operands):
        raise TypeError("einsum(): expected an equation followed by one or more tensors")
    dtypes = {str(o.dtype) for o in operands}
    if len(dtypes) > 1:
        raise RuntimeError(f"einsum(): the operands have dtypes {sorted(dtypes)}; cast them to one dtype (as torch)")
    terms, output, sizes = parse_equation(equation, [o.shape for o in operands])
    return Einsum.apply(*operands, terms=tuple(terms), output=output, sizes=sizes)
