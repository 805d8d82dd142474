"""The differentiable ops: every Function with a hand-written backward, in three groups.

1. ``PRIMITIVES``: the ops a learner must read. Every other op could be written with these
   (and is, in ``tests/test_ops_composite.py``); they are enough for every model in groundup.
2. ``CONVENIENCE``: ops that are compositions of primitives but have their own backward; each
   says why it earned one (fewer graph nodes and saved arrays, a stable formula, or torch's
   rule at a kink or a tie). None of them is needed to understand autograd.
3. ``FUSED``: whole layers and losses in one node, for speed (fewer passes and temporaries,
   2-D GEMMs, threads) and numerical safety (log-sum-exp shifts). Each says what it fuses.

Each entry is ``"module.Class": "why"``, the module relative to ``groundup``. A test checks that
every ``Function`` subclass in the package is listed here exactly once, and that every
non-primitive op gives the same values and gradients as its composite through primitives
(``tests/test_ops_composite.py``; the GPT's fused stack is checked against the readable model).

Where the code is: ``function.py`` (the Function base, ``unbroadcast``), then
``ops/elementwise.py``, ``ops/reduce.py``, ``ops/movement.py``, ``ops/linalg.py`` (primitives and
convenience ops), ``ops/cumulative.py`` and ``ops/einsum.py`` (convenience ops),
``ops/pointwise.py`` (trigonometry, erf, rounding, remainders), ``ops/fused.py``,
``ops/conv.py``, ``ops/attention.py``; ``ops/methods.py``, ``ops/ordering.py`` and
``ops/pointwise_methods.py`` make them Tensor methods with torch's names. READING.md gives the
reading order.
"""

from __future__ import annotations

PRIMITIVES: dict[str, str] = {
    "ops.elementwise.Add": "z = x + y, with broadcasting (its adjoint, unbroadcast, sums)",
    "ops.elementwise.Mul": "z = x * y, with broadcasting",
    "ops.elementwise.PowScalar": "z = x ** c for a number c: reciprocal, square root, square",
    "ops.elementwise.Exp": "z = e ** x (saves its output: dz/dx = z)",
    "ops.elementwise.Log": "z = log x",
    "ops.elementwise.Where": "z = cond ? x : y, with cond a constant mask: selection, masking",
    "ops.reduce.Sum": "sum over dims; the backward broadcasts the gradient back",
    "ops.reduce.MaxMin": "max or min over dims; the gradient goes to the arg-max",
    "ops.movement.Reshape": "the same elements in a new shape",
    "ops.movement.Permute": "reorder the axes (transpose)",
    "ops.movement.Expand": "broadcast to a bigger shape (the backward sums, like unbroadcast)",
    "ops.movement.GetItem": "x[index]: slices, integer arrays, masks (the backward scatter-adds)",
    "ops.linalg.MatMul": "z = x @ y, batched; the backward is two more matmuls",
    "ops.elementwise.Cast": "plumbing: change the dtype (the gradient is cast back)",
    "ops.movement.ToDevice": "plumbing: move between NumPy and CuPy (the gradient moves back)",
}

CONVENIENCE: dict[str, str] = {
    "ops.elementwise.Sub": "one node for x + (-1 * y), and no array saved",
    "ops.elementwise.Neg": "one node for -1 * x, and no array saved",
    "ops.elementwise.Div": "one node for x * y ** -1, no temporary 1 / y kept",
    "ops.elementwise.Pow": "one node for exp(y * log x), a tensor y; dz/dy = 0 where x <= 0 (the composite: nan)",
    "ops.elementwise.Sqrt": "saves its output, so dz/dx = 1 / (2 z) costs no second power",
    "ops.elementwise.Rsqrt": "saves its output (layer norm's 1 / sqrt(var + eps)), as Sqrt does",
    "ops.elementwise.Tanh": "stable for any |x| where (e^2x - 1) / (e^2x + 1) overflows; saves its output",
    "ops.elementwise.Sigmoid": "stable for any |x| where 1 / (1 + e^-x) overflows; saves its output",
    "ops.elementwise.Relu": "one node for x * (x > 0), with torch's subgradient 0 at 0 stated",
    "ops.elementwise.Abs": "one node for x * sign(x), with torch's subgradient 0 at 0 stated",
    "ops.elementwise.Clamp": "one node for two wheres, with torch's rule: the gradient passes at the bounds",
    "ops.elementwise.Maximum": "torch's tie rule (half the gradient each) in one node: (x + y + |x - y|) / 2",
    "ops.elementwise.Minimum": "torch's tie rule in one node: (x + y - |x - y|) / 2",
    "ops.elementwise.MaskedFill": "where(mask, value, x) with the mask kept as a raw array, no value tensor",
    "ops.elementwise.Clone": "torch's clone: a copy that stays in the graph (x * 1 without the multiply)",
    "ops.reduce.Mean": "one node for sum * (1 / n)",
    "ops.reduce.Var": "one node saving the centred values (the composite is six nodes over mean, square, sum); "
                      "std in the same node, with torch's zero gradient where it is 0",
    "ops.reduce.LogSumExp": "stable (shifted by the max) in one node; saves only the softmax",
    "ops.movement.Repeat": "torch's repeat in one node (reshape, expand, reshape)",
    "ops.movement.Cat": "n inputs in one node (the composite places each with a 0/1 matmul and adds)",
    "ops.movement.Gather": "torch's gather in one node (GetItem with index grids)",
    "ops.movement.Triangle": "tril / triu without a mask array saved (the composite multiplies by one)",
    "ops.cumulative.Cumsum": "one O(n) pass each way; the composite is x @ triu(ones(n, n)), an n x n matmul",
    "ops.cumulative.Cumprod": "one node for n chained multiplies, with torch's gradient at zeros (sum(g * out) / x "
                              "would be nan there)",
    "ops.cumulative.Prod": "one node for n chained multiplies, with torch's gradient at zeros (out / x is nan there)",
    "ops.einsum.Einsum": "any contraction in one node, forward and backward by einsum (NumPy picks a BLAS order); "
                         "the composite is permute, reshape, broadcast multiply and sum",
    # pointwise maths (ops/pointwise.py): exact where a primitive composite is a series or loses digits
    "ops.pointwise.Sin": "sin in one node; the composite through primitives is a Taylor series",
    "ops.pointwise.Cos": "cos in one node; the composite through primitives is a Taylor series",
    "ops.pointwise.Tan": "one node for sin / cos (each a series through primitives), saving only its output",
    "ops.pointwise.Asin": "asin in one node; the composite through primitives is a series slow near +-1",
    "ops.pointwise.Acos": "pi / 2 - asin in one node; the composite through primitives is a series",
    "ops.pointwise.Atan": "atan in one node; the composite through primitives is a series (|x| < 1 only)",
    "ops.pointwise.Atan2": "the quadrant-aware angle in one node; the composite is an atan series plus wheres",
    "ops.pointwise.Sinh": "exact near 0, where the composite (e^x - e^-x) / 2 cancels away every digit",
    "ops.pointwise.Cosh": "one node for (e^x + e^-x) / 2, with no e^-x temporary",
    "ops.pointwise.Log1p": "exact for tiny |x|, where log(1 + x) rounds 1 + x to 1",
    "ops.pointwise.Expm1": "exact for tiny |x|, where e^x - 1 cancels; saves its output",
    "ops.pointwise.Erf": "erf by backend.erf (SciPy / CuPy); the composite through primitives is a series",
    "ops.pointwise.PiecewiseConstant": "floor / ceil / round / trunc / sign with torch's zero gradient (the "
                                       "composite: x * 0 plus a constant)",
    "ops.pointwise.Remainder": "remainder / fmod by xp's exact kernels, with torch's gradients (1, -floor or "
                               "-trunc of x / y); the composite x - y q can round to y or below 0",
    "ops.pointwise.FloorDivide": "floor(x / y) by xp's floor_divide in one node whose backward refuses, as torch's",
}

FUSED: dict[str, str] = {
    "ops.fused.Softmax": "shift, exp, sum, divide in one pass; the backward y * (g - sum(g * y)) saves y only",
    "ops.fused.LogSoftmax": "stable log-sum-exp in one node; the backward needs only its output",
    "ops.fused.CrossEntropy": "log-softmax + pick + mean, with torch's options; the backward is p - q in one pass",
    "ops.fused.NLLLoss": "pick + weight + mean in one node; the backward is a scatter, no graph over (N, C)",
    "ops.fused.BCEWithLogits": "stable for any |x| (softplus form) with pos_weight; sigmoid + log would overflow",
    "ops.fused.LayerNorm": "~12 nodes in one, saving only x-hat and 1 / std; the classic closed-form backward",
    "ops.fused.GELU": "the exact form needs erf, which no primitive has; the tanh form in one node",
    "ops.fused.Linear": "x @ W.T + b as one 2-D GEMM over all leading dims, forward and backward",
    "ops.fused.Embedding": "weight[idx]; the weight gradient as one one-hot GEMM (a scatter-add when that is large)",
    "ops.conv.Conv2d": "im2col + one GEMM; the composite is kh * kw sliced matmuls",
    "ops.conv.MaxPool2d": "windows as one strided view, no copy; the composite gathers every window, then max",
    "ops.conv.AvgPool2d": "windows as one strided view, no copy; the composite gathers every window, then mean",
    "ops.attention.ScaledDotProductAttention": "softmax(q k^T / sqrt(d) + mask) v in one node; the scores are not kept",
    "ops.packed_attention.PackedAttention": "SDPA from packed in-projections to merged heads in one node: the head "
                                            "split and merge (about ten movement nodes) as strided views",
    "models.gpt_fast.TransformerStack": "the GPT's whole block stack in one node, the batch split over threads",
    "models.gpt_fast.LMHeadLoss": "final LayerNorm + tied head + cross-entropy in one threaded node, no logits graph",
    "nn.scans.RNNScan": "a whole sequence in one node: the time loop and backprop through time in NumPy",
    "nn.scans.GRUScan": "a whole GRU sequence in one node (T steps of dozens of nodes each otherwise)",
    "nn.scans.LSTMScan": "a whole LSTM sequence in one node (T steps of dozens of nodes each otherwise)",
    "ops.additive_attention.AdditiveAttention": "one decoder step of Bahdanau attention in one node (about a dozen "
                                                "otherwise), for the teacher-forced seq2seq decoder",
}
