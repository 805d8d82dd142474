"""groundup.einsum (groundup/ops/einsum.py) against torch.einsum, values and gradients, and float64
finite differences: contractions of one to three operands, repeated letters (diagonals, traces),
letters summed inside one operand, ellipses, size-1 broadcasting, implicit outputs and the errors.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import Backend, assert_matches_torch, check_grad
from hypothesis import given
from hypothesis import strategies as st

import groundup as gu
from groundup.ops.einsum import parse_equation

torch = pytest.importorskip("torch")

# equation: operand shapes
EQUATIONS = {
    "ij,jk->ik": [(3, 4), (4, 5)],
    "bij,bjk->bik": [(2, 3, 4), (2, 4, 5)],
    "bhqd,bhkd->bhqk": [(2, 2, 3, 4), (2, 2, 5, 4)],
    "ij,jk,kl->il": [(2, 3), (3, 4), (4, 2)],
    "ij,jk,ki": [(2, 3), (3, 4), (4, 2)],
    "ii->i": [(4, 4)],
    "ii": [(3, 3)],
    "iij->ij": [(3, 3, 2)],
    "ii,i->i": [(3, 3), (3,)],
    "ij->ji": [(3, 4)],
    "ijk->kji": [(2, 3, 4)],
    "ij->": [(3, 4)],
    "ij->j": [(3, 4)],
    "ij,k->j": [(3, 4), (2,)],
    "ij": [(3, 4)],
    "ba": [(2, 3)],
    "i,j->ij": [(3,), (4,)],
    "i,j,k->ijk": [(2,), (3,), (2,)],
    "i,i->": [(5,), (5,)],
    "ij,ij->ij": [(3, 4), (3, 4)],
    "ij,j->i": [(3, 1), (4,)],
    "...ij->...ji": [(2, 3, 4, 5)],
    "...ij,...jk->...ik": [(2, 1, 3, 4), (5, 4, 2)],
    "...ii->...i": [(2, 3, 3)],
    "...ij->ij": [(2, 3, 4)],
    "i...->...": [(3, 2, 4)],
    "...j,j": [(5, 2, 3), (3,)],
    "aB,Bc->ac": [(2, 3), (3, 4)],
    "aB": [(2, 3)],
    "Zb,ca": [(2, 3), (4, 5)],
    " ij , jk -> ik ": [(2, 3), (3, 2)],
    "->": [()],
    ",ij->ij": [(), (2, 3)],
}


@pytest.mark.parametrize("equation", list(EQUATIONS))
def test_matches_torch(equation: str, backend: Backend) -> None:
    assert_matches_torch(EQUATIONS[equation], lambda *t: torch.einsum(equation, *t),
                         lambda *t: gu.einsum(equation, *t), device=backend.device)


@pytest.mark.parametrize("equation", ["ij,jk->ik", "ii->i", "ij,k->j", "...ij,...jk->...ik", "ij"])
def test_int64_matches_torch(equation: str) -> None:
    arrays = [np.random.randint(-3, 4, size=s) for s in EQUATIONS[equation]]
    assert_matches_torch(arrays, lambda *t: torch.einsum(equation, *t), lambda *t: gu.einsum(equation, *t))


@pytest.mark.parametrize("equation", ["ij,jk->ik", "ij,jk,ki", "ii->i", "iij->ij", "ii,i->i", "ij,k->j",
                                      "ij,j->i", "...ij,...jk->...ik", "...ii->...i", "i...->...", "ij,ij->ij"])
def test_grad_finite_differences(equation: str, backend: Backend) -> None:
    check_grad(lambda *t: gu.einsum(equation, *t), *EQUATIONS[equation], device=backend.device)


def test_a_list_of_operands_and_only_some_requiring_grad() -> None:
    a, b = gu.randn(2, 3, requires_grad=True), gu.randn(3, 4)
    out = gu.einsum("ij,jk->ik", [a, b])
    np.testing.assert_allclose(out.data, a.data @ b.data, rtol=1e-6)
    out.sum().backward()
    np.testing.assert_allclose(a.grad.data, np.ones((2, 4)) @ b.data.T, rtol=1e-6)
    assert b.grad is None


@st.composite
def contractions(draw: st.DrawFn) -> tuple[str, list[tuple[int, ...]]]:
    """A random equation over letters a-e: 1-3 operands of 0-3 letters (a letter may repeat inside one),
    and an output of distinct letters that some operand has."""
    sizes = dict(zip("abcde", draw(st.lists(st.integers(1, 3), min_size=5, max_size=5))))
    terms = draw(st.lists(st.lists(st.sampled_from("abcde"), max_size=3), min_size=1, max_size=3))
    used = sorted({c for t in terms for c in t})
    output = draw(st.permutations(used))[:draw(st.integers(0, len(used)))]
    equation = ",".join("".join(t) for t in terms) + "->" + "".join(output)
    return equation, [tuple(sizes[c] for c in t) for t in terms]


@given(contraction=contractions())
def test_random_contractions_match_torch(contraction: tuple[str, list[tuple[int, ...]]]) -> None:
    equation, shapes = contraction
    assert_matches_torch(shapes, lambda *t: torch.einsum(equation, *t), lambda *t: gu.einsum(equation, *t),
                         dtypes=("float64",))


def test_parse_spells_out_the_ellipsis_and_the_implicit_output() -> None:
    assert parse_equation("...ij,jk", [(5, 2, 3), (3, 4)]) == (["aij", "jk"], "aik", {"a": 5, "i": 2, "j": 3, "k": 4})
    assert parse_equation("ji", [(2, 3)])[1] == "ij"                    # implicit: alphabetical
    assert parse_equation("ii", [(3, 3)])[1] == ""                      # a letter used twice is summed
    assert parse_equation("ij,jk->ik", [(2, 1), (3, 4)])[2]["j"] == 3    # size 1 broadcasts


def test_bad_input_is_refused_naming_the_op() -> None:
    a, b = gu.randn(2, 3), gu.randn(3, 4)
    cases = [
        (lambda: gu.einsum("ij,jk->ik", a), "names 2 operands, but 1"),
        (lambda: gu.einsum("ijk,jk->ik", a, b), "names 3 dims, but the operand has 2"),
        (lambda: gu.einsum("...ijk->i", a), "more than its 2"),
        (lambda: gu.einsum("ij,kj->ik", a, b), "'j' has size 3 in one operand and 4"),
        (lambda: gu.einsum("ii->i", a), "'i' is repeated in operand 0 with sizes 2 and 3"),
        (lambda: gu.einsum("ij->iz", a), "names 'z', which no operand has"),
        (lambda: gu.einsum("ij->ii", a), "names 'i' twice"),
        (lambda: gu.einsum("i1->i", a), "only letters"),
        (lambda: gu.einsum("i.j->ij", a), "'.' that is not one '...'"),
        (lambda: gu.einsum("ij->i->j", a), "more than one '->'"),
        (lambda: gu.einsum("ij,jk->ik", a, b.double()), "dtypes"),
    ]
    for fn, match in cases:
        with pytest.raises(RuntimeError, match=f"einsum\\(\\).*{match}"):
            fn()
    with pytest.raises(TypeError, match="einsum"):
        gu.einsum("ij", a.data)
    with pytest.raises(TypeError, match="einsum"):
        gu.einsum(a, a)


def test_docstring_examples_run() -> None:
    import doctest

    from groundup.ops import einsum

    result = doctest.testmod(einsum, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted >= 2, result
