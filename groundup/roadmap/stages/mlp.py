"""Stage ``mlp``: a feedforward network on digits (or MNIST), and backpropagation by hand.

1. XOR: a linear classifier cannot separate it (accuracy ~0.5); one hidden layer with a
   nonlinearity can (~1.0). Decision regions plotted.
2. Digits: an MLP (``groundup.models.mlp``) against the same model without its hidden layer
   (softmax regression), by k-fold cross-validation so that the comparison does not hang on one
   small test split; loss curves and the confusion matrix. ``--dataset mnist``: one train/test run
   on MNIST instead.
3. Backprop by hand: a two-layer tanh net whose gradients are derived step by step (written out
   in the report), computed in plain NumPy, and checked against groundup's autograd and central
   finite differences in float64.

The classifier helpers (``fit_classifier``, ``kfold``, ...) are in ``groundup/roadmap/classify.py``,
shared with the ``cnn`` stage.

References: Rumelhart, Hinton & Williams (1986); Minsky & Papert, "Perceptrons" (1969) on XOR;
cs231n "Backpropagation, intuitions": https://cs231n.github.io/optimization-2/
"""

from __future__ import annotations

import html
import math
from typing import Any

import numpy as np

import groundup as gu
from groundup import functional as F
from groundup import optim
from groundup.models.mlp import MLP, MLPConfig
from groundup.roadmap import Finding, claims
from groundup.roadmap.classify import (
    LINEAR_RECIPE,
    MLP_RECIPE,
    confusion_matrix,
    fit_classifier,
    kfold,
    load_digits_arrays,
    load_image_data,
    mlp_config_for,
    predict_logits,
)
from groundup.roadmap.plots import plot_confusion
from groundup.roadmap.runner import Context, Stage
from groundup.roadmap.training import classification_loss, train

__all__ = ["STAGE", "backprop_check", "xor", "digits", "backprop_by_hand"]

XOR_HIDDEN = 16


# ---------------------------------------------------------------------------- 1. XOR
def _xor_data(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n points around the four corners (+-1, +-1); label 1 where exactly one coordinate is positive."""
    corners = rng.integers(0, 2, size=(n, 2))                               # (n, 2) in {0, 1}
    x = (2 * corners - 1) + 0.35 * rng.standard_normal((n, 2))              # (n, 2)
    return x.astype(np.float32), (corners[:, 0] ^ corners[:, 1]).astype(np.int64)


def xor(ctx: Context, state: dict[str, Any]) -> Finding:
    """A linear model against one hidden layer of tanh units on XOR, full-batch Adam."""
    x, y = _xor_data(ctx.rng(1), ctx.pick(800, 800, 200))
    half = len(x) // 2
    steps = ctx.budget("XOR training steps", full=500, quick=300, tiny=20)
    models = {"linear": MLP(MLPConfig(in_features=2, hidden_sizes=(), num_classes=2)),
              "mlp": MLP(MLPConfig(in_features=2, hidden_sizes=(XOR_HIDDEN,), num_classes=2, activation="tanh"))}
    for k, (name, model) in enumerate(models.items()):
        train(ctx, model, lambda split, rng: (x[:half], y[:half]), steps=steps, lr=0.05, schedule="constant",
              description=f"XOR: {name}", loss_fn=classification_loss, seed_offset=k,
              optimizer=optim.Adam(model.to(ctx.device).parameters(), lr=0.05))
    acc = {name: float((predict_logits(m, x[half:], ctx.device).argmax(1) == y[half:]).mean())
           for name, m in models.items()}
    mlp_min = ctx.threshold("XOR: MLP accuracy at least", full=0.95)
    linear_max = ctx.threshold("XOR: linear accuracy at most", full=0.65)
    fig = ctx.figure(10, 4.4)
    grid = np.linspace(-2.5, 2.5, ctx.pick(200, 200, 50), dtype=np.float32)
    gx, gy = np.meshgrid(grid, grid)
    points = np.stack([gx.ravel(), gy.ravel()], 1)                          # (G*G, 2)
    for ax, (name, m) in zip(fig.subplots(1, 2), models.items()):
        region = predict_logits(m, points, ctx.device).argmax(1).reshape(gx.shape)
        ax.contourf(gx, gy, region, levels=[-0.5, 0.5, 1.5], colors=["#cfe2f3", "#f4cccc"])
        ax.scatter(x[half:, 0], x[half:, 1], c=np.where(y[half:] == 1, "#cc0000", "#1155cc"), s=8)
        title = "linear model" if name == "linear" else f"MLP, {XOR_HIDDEN} tanh units"
        ax.set(title=f"{title}: test accuracy {acc[name]:.2f}", xlabel="x1", ylabel="x2", aspect="equal")
    return Finding(
        title="XOR: what a linear model cannot do",
        metrics={"xor": {"n_train": half, "n_test": len(x) - half, "steps": steps, "mlp_hidden_units": XOR_HIDDEN,
                         "linear_test_accuracy": acc["linear"], "mlp_test_accuracy": acc["mlp"]}},
        claims=[claims.claim("mlp.xor", "A hidden layer with a nonlinearity solves what a linear model cannot (XOR)",
                             claims.ge("MLP accuracy", acc["mlp"], mlp_min),
                             claims.le("linear accuracy", acc["linear"], linear_max))],
        plots=[ctx.savefig(fig, "xor.png", "XOR: the red class is where exactly one coordinate is positive. A "
                           "linear model can only cut the plane with one straight line; one hidden layer of "
                           "tanh units bends the boundary around the four clusters.")],
        text=[f"A feedforward network stacks linear layers with a nonlinearity between them. On XOR, a linear model "
              f"is stuck at chance ({acc['linear']:.0%} test accuracy) because no straight line separates the "
              f"classes; {XOR_HIDDEN} tanh hidden units solve it ({acc['mlp']:.0%})."])


# ---------------------------------------------------------------------------- 2. digits
def _splits(ctx: Context, data: dict[str, Any]) -> list[tuple[Any, Any]]:
    if data["name"] == "mnist":
        return [(None, None)]
    return kfold(len(data["x"]), ctx.budget("cross-validation folds", full=5, quick=5, tiny=2), ctx.seed)


def digits(ctx: Context, state: dict[str, Any]) -> Finding:
    """The MLP against softmax regression, k-fold on digits (or MNIST's own test set)."""
    data = load_image_data(ctx)
    mnist = data["name"] == "mnist"
    if mnist:
        epochs = ctx.budget("MLP epochs (MNIST)", full=15, quick=4, tiny=1)
        linear_epochs = ctx.budget("linear model epochs (MNIST)", full=5, quick=2, tiny=1)
    else:
        epochs = ctx.budget("MLP epochs", full=60, quick=30, tiny=2, option="epochs")
        linear_epochs = ctx.budget("linear model epochs", full=60, quick=30, tiny=2)
    hidden = ctx.option("hidden", MLP_RECIPE["hidden_sizes"][0])
    splits = _splits(ctx, data)
    folds, curves, y_true, y_pred = [], {}, [], []
    for fold, (tr, te) in enumerate(splits):
        x_tr, y_tr, x_te, y_te = ((data["x"], data["y"], data["x_test"], data["y_test"]) if tr is None else
                                  (data["x"][tr], data["y"][tr], data["x"][te], data["y"][te]))
        tag = f"fold {fold + 1}/{len(splits)}" if len(splits) > 1 else data["name"]
        mlp = MLP(mlp_config_for(x_tr, (hidden,)))
        h_mlp = fit_classifier(ctx, mlp, x_tr, y_tr, x_te, y_te, epochs=epochs, lr=MLP_RECIPE["lr"],
                               batch_size=MLP_RECIPE["batch_size"], description=f"MLP, {tag}",
                               rng=ctx.rng(10 + fold), seed_offset=10 + fold)
        linear = MLP(mlp_config_for(x_tr, hidden_sizes=()))
        h_lin = fit_classifier(ctx, linear, x_tr, y_tr, x_te, y_te, epochs=linear_epochs, lr=LINEAR_RECIPE["lr"],
                               batch_size=LINEAR_RECIPE["batch_size"], description=f"linear, {tag}",
                               rng=ctx.rng(20 + fold), seed_offset=20 + fold)
        y_true.append(y_te)
        y_pred.append(predict_logits(mlp, x_te, ctx.device).argmax(1))
        folds.append({"mlp_test_accuracy": h_mlp["test_accuracy"][-1],
                      "linear_test_accuracy": h_lin["test_accuracy"][-1], "n_test": len(y_te)})
        curves = curves or {"mlp": h_mlp, "linear": h_lin}
    mlp_acc = float(np.mean([f["mlp_test_accuracy"] for f in folds]))
    linear_acc = float(np.mean([f["linear_test_accuracy"] for f in folds]))
    n_params = {"mlp": mlp.num_parameters(), "linear": linear.num_parameters()}
    cm = confusion_matrix(np.concatenate(y_true), np.concatenate(y_pred))
    n_test = min(f["n_test"] for f in folds)
    metrics = {"classification": {
        "dataset": data["name"], "protocol": f"{len(splits)}-fold cross-validation" if len(splits) > 1
        else "train/test split", "mlp_test_accuracy": mlp_acc, "linear_test_accuracy": linear_acc,
        "mlp_parameters": n_params["mlp"], "linear_parameters": n_params["linear"], "mlp_hidden_sizes":
        [hidden], "epochs": epochs, "folds": folds,
        "curves_first_fold": curves, "confusion_matrix": cm.tolist(), "n_folds": len(splits),
        "smallest_test_split": n_test, "one_mistake_accuracy": 1.0 / n_test}}
    target = (ctx.threshold("MLP test accuracy (MNIST)", full=0.98, quick=0.97) if mnist
              else ctx.threshold("MLP test accuracy (digits)", full=0.97, quick=0.965))
    where = "MNIST's test digits" if mnist else "held-out digits (mean over the folds)"
    found = [claims.claim("mlp.accuracy", f"A feedforward net classifies {where}",
                          claims.ge("test accuracy", mlp_acc, target)),
             claims.claim("mlp.beats_linear", "A hidden layer with a nonlinearity beats the linear model (softmax "
                          f"regression) on {data['name']}", claims.gt("MLP accuracy", mlp_acc, "linear accuracy",
                                                                      linear_acc))]
    plots = [_curves_plot(ctx, curves, "the first fold" if len(splits) > 1 else data["name"]),
             plot_confusion(ctx, cm, "confusion.png", "Confusion matrix of the MLP on " + (
                 "every digit, each predicted by the fold's model that did not train on it" if len(splits) > 1
                 else "the test set") + ": the diagonal counts correct answers; off-diagonal cells show which "
                 "digits it mistakes for which.", title="MLP confusion matrix")]
    if len(splits) > 1:
        plots.append(_folds_plot(ctx, folds, n_test))
    text = [f"On {data['name']}, an MLP with {hidden} ReLU hidden units ({n_params['mlp']:,} parameters) reaches "
            f"{mlp_acc:.1%} test accuracy against {linear_acc:.1%} for the same model without its hidden layer "
            f"({n_params['linear']:,} parameters)"
            + (f", averaged over {len(splits)} cross-validation folds so that every digit is tested once." if
               len(splits) > 1 else ".")]
    return Finding(title="Digits: an MLP against a linear model", metrics=metrics, claims=found, plots=plots,
                   text=text)


def _curves_plot(ctx: Context, curves: dict[str, Any], which: str) -> Any:
    fig = ctx.figure(10, 3.8)
    ax1, ax2 = fig.subplots(1, 2)
    for name, style in (("mlp", "-"), ("linear", "--")):
        epochs_axis = np.arange(1, len(curves[name]["train_loss"]) + 1)
        ax1.plot(epochs_axis, curves[name]["train_loss"], style, color="C0", label=f"{name} train")
        ax1.plot(epochs_axis, curves[name]["test_loss"], style, color="C1", label=f"{name} test")
        ax2.plot(epochs_axis, curves[name]["test_accuracy"], style, color="C2" if name == "mlp" else "C7", label=name)
    ax1.set(xlabel="epoch", ylabel="cross-entropy", yscale="log", title="loss")
    ax2.set(xlabel="epoch", ylabel="test accuracy", title="test accuracy")
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    return ctx.savefig(fig, "loss_curves.png", f"Training and test loss, and test accuracy, per epoch ({which}): "
                       "MLP solid, linear model dashed. Test loss rising while training loss falls would be "
                       "overfitting.")


def _folds_plot(ctx: Context, folds: list[dict[str, Any]], n_test: int) -> Any:
    fig = ctx.figure(6, 3.4)
    ax = fig.subplots()
    idx = np.arange(len(folds))
    ax.bar(idx - 0.2, [f["linear_test_accuracy"] for f in folds], 0.4, label="linear", color="C7")
    ax.bar(idx + 0.2, [f["mlp_test_accuracy"] for f in folds], 0.4, label="MLP", color="C2")
    low = min(min(f["linear_test_accuracy"], f["mlp_test_accuracy"]) for f in folds)
    ax.set(xticks=idx, xticklabels=[f"fold {i + 1}" for i in idx], ylabel="test accuracy",
           ylim=(max(0.0, low - 0.03), 1.0))
    ax.legend(ncol=2, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)  # above the bars, none hidden
    return ctx.savefig(fig, "folds.png", f"Test accuracy on each cross-validation fold. With {n_test} test digits "
                       f"one mistake is {1 / n_test:.1%} of accuracy, so single splits differ by a point or more; "
                       "the claims use the mean over folds.")


# ---------------------------------------------------------------------------- 3. backprop by hand
_DERIVATION = """<p>The network: a batch of N digits <code>x</code> (N, 64), a hidden layer of H = 16 tanh units and
10 logits, trained with the mean softmax cross-entropy. In the forward pass every intermediate result is kept:</p>
<pre>h = x W1^T + b1          (N, H)     W1: (H, 64), b1: (H,)
a = tanh(h)              (N, H)
z = a W2^T + b2          (N, 10)    W2: (10, H), b2: (10,)
p = softmax(z)           (N, 10)    p[n, c] = exp(z[n, c]) / sum_k exp(z[n, k])
L = -(1/N) sum_n log p[n, y_n]</pre>
<p>Backpropagation applies the chain rule from the loss back to each parameter, one step per line, each
step reusing the gradient of the step before (dX below means dL/dX, with the shape of X):</p>
<pre>dz  = (p - Y) / N        (N, 10)    Y = one-hot labels; the softmax and the log cancel into p - Y
dW2 = dz^T a             (10, H)    z is linear in W2: sum over the batch of outer products
db2 = sum_n dz[n]        (10,)      b2 is added to every row of z
da  = dz W2              (N, H)     z is linear in a
dh  = da * (1 - a^2)     (N, H)     tanh'(h) = 1 - tanh(h)^2, elementwise
dW1 = dh^T x             (H, 64)
db1 = sum_n dh[n]        (H,)</pre>
<p>The same steps in NumPy are the whole backward pass:</p>
<pre>dz = (p - np.eye(10)[y]) / N
dW2, db2 = dz.T @ a, dz.sum(0)
dh = (dz @ W2) * (1 - a ** 2)
dW1, db1 = dh.T @ x, dh.sum(0)</pre>
<p>They are checked two ways: against groundup's autograd (which never saw these formulas: it composes the
backward rules of linear, tanh and cross-entropy), and against central finite differences
<code>(L(w + eps) - L(w - eps)) / (2 eps)</code> with eps = 1e-6, one parameter at a time, all in float64.
The error of one parameter tensor is <code>|g_a - g_b| / max(|g_a|, |g_b|)</code> (Euclidean norms); the claim
takes the largest over the four tensors.</p>"""


def _two_layer_forward(params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> tuple[float, dict]:
    h = x @ params["W1"].T + params["b1"]                                   # (N, H)
    a = np.tanh(h)                                                          # (N, H)
    z = a @ params["W2"].T + params["b2"]                                   # (N, C)
    z = z - z.max(1, keepdims=True)                                         # softmax is shift-invariant
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)                         # (N, C)
    loss = float(-np.log(p[np.arange(len(y)), y]).mean())
    return loss, {"a": a, "p": p}


def _hand_backward(params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    _, cache = _two_layer_forward(params, x, y)
    a, p, n = cache["a"], cache["p"], len(x)
    dz = (p - np.eye(p.shape[1])[y]) / n                                    # (N, C)
    dh = (dz @ params["W2"]) * (1 - a ** 2)                                 # (N, H)
    return {"W1": dh.T @ x, "b1": dh.sum(0), "W2": dz.T @ a, "b2": dz.sum(0)}


def _engine_backward(params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    tensors = {k: gu.tensor(v, dtype=gu.float64, requires_grad=True) for k, v in params.items()}
    hidden = F.linear(gu.tensor(x, dtype=gu.float64), tensors["W1"], tensors["b1"]).tanh()
    loss = F.cross_entropy(F.linear(hidden, tensors["W2"], tensors["b2"]), gu.tensor(y))
    loss.backward()
    return {k: t.grad.numpy() for k, t in tensors.items()}


def _finite_differences(params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, eps: float = 1e-6,
                        ) -> dict[str, np.ndarray]:
    grads = {}
    for name, value in params.items():
        grad = np.zeros_like(value)
        for i in np.ndindex(value.shape):
            old = value[i]
            value[i] = old + eps
            plus, _ = _two_layer_forward(params, x, y)
            value[i] = old - eps
            minus, _ = _two_layer_forward(params, x, y)
            value[i] = old
            grad[i] = (plus - minus) / (2 * eps)
        grads[name] = grad
    return grads


def _relative_error(a: np.ndarray, b: np.ndarray) -> float:
    scale = max(np.linalg.norm(a), np.linalg.norm(b))
    return float(np.linalg.norm(a - b) / scale) if scale > 0 else 0.0


def backprop_check(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, hidden: int = 16) -> dict[str, Any]:
    """Gradients of the two-layer tanh net by hand, by the engine and by finite differences (float64)."""
    d, c = x.shape[1], 10
    params = {"W1": rng.standard_normal((hidden, d)) / math.sqrt(d), "b1": 0.1 * rng.standard_normal(hidden),
              "W2": rng.standard_normal((c, hidden)) / math.sqrt(hidden), "b2": 0.1 * rng.standard_normal(c)}
    hand = _hand_backward(params, x, y)
    engine = _engine_backward(params, x, y)
    numeric = _finite_differences(params, x, y)
    rows = {name: {"hand_vs_engine": _relative_error(hand[name], engine[name]),
                   "hand_vs_finite_differences": _relative_error(hand[name], numeric[name]),
                   "engine_vs_finite_differences": _relative_error(engine[name], numeric[name]),
                   "grad_norm": float(np.linalg.norm(hand[name]))} for name in params}
    return {"per_parameter": rows, "n_parameters": int(sum(v.size for v in params.values())),
            "max_hand_vs_engine": max(r["hand_vs_engine"] for r in rows.values()),
            "max_hand_vs_finite_differences": max(r["hand_vs_finite_differences"] for r in rows.values()),
            "loss": _two_layer_forward(params, x, y)[0]}


def backprop_by_hand(ctx: Context, state: dict[str, Any]) -> Finding:
    """Gradients of a two-layer tanh net by hand, by the engine and by finite differences (float64)."""
    digits_x, digits_y = load_digits_arrays()
    batch = 32
    pick = ctx.rng(3).choice(len(digits_x), batch, replace=False)
    check = backprop_check(digits_x[pick].reshape(batch, -1).astype(np.float64), digits_y[pick], ctx.rng(4))
    check["batch"] = batch
    bp_threshold = ctx.threshold("backprop by hand: max relative error", full=1e-6)
    rows = "".join(f"<tr><td><code>d{html.escape(name)}</code></td><td class=num>{r['grad_norm']:.3e}</td>"
                   f"<td class=num>{r['hand_vs_engine']:.1e}</td><td class=num>{r['hand_vs_finite_differences']:.1e}"
                   f"</td></tr>" for name, r in check["per_parameter"].items())
    section = (_DERIVATION + f"<p>On a batch of {batch} digits ({check['n_parameters']} parameters, loss "
               f"{check['loss']:.4f}):</p><table><tr><th>gradient</th><th>norm</th><th>rel. error hand vs engine"
               f"</th><th>rel. error hand vs finite differences</th></tr>{rows}</table>")
    return Finding(
        title="Backpropagation by hand", metrics={"backprop_by_hand": check},
        claims=[claims.claim(
            "mlp.backprop", "Backpropagation computes exactly the derivatives that finite differences estimate "
            "(hand-derived gradients = groundup autograd = finite differences, float64)",
            claims.le("max rel. error hand vs engine", check["max_hand_vs_engine"], bp_threshold),
            claims.le("max rel. error hand vs finite differences", check["max_hand_vs_finite_differences"],
                      bp_threshold))],
        sections=[("The derivation, step by step", section)],
        text=["Training is backpropagation plus Adam: the derivation below writes out every gradient of a "
              "two-layer net, computes them in NumPy, and finds them equal to groundup's autograd (relative error "
              f"{check['max_hand_vs_engine']:.0e}) and to finite differences "
              f"({check['max_hand_vs_finite_differences']:.0e})."])

# Report guide: static text, not part of the run's record (the provenance check reads only the record).
HOW = (
    "An MLP stacks linear maps with a nonlinearity between them; without the nonlinearity the stack "
    "collapses to one linear map, which is why XOR needs it:",
    '<div class="math">h = relu(W₁ x + b₁),   z = W₂ h + b₂,   p = softmax(z),   L = −log p_y</div>',
    "Backpropagation is the chain rule applied from the loss backwards, one layer at a time; each layer "
    "turns the gradient of its output into the gradients of its weights and of its input:",
    '<div class="math">δz = p − onehot(y)\n'
    '∂L/∂W₂ = δz hᵀ,   ∂L/∂b₂ = δz,   δh = W₂ᵀ δz\n'
    'δa = δh ⊙ relu′(a)   (a = W₁ x + b₁)\n'
    '∂L/∂W₁ = δa xᵀ,   ∂L/∂b₁ = δa</div>',
    "The engine does exactly this for any graph: every op saves what its derivative needs in the forward "
    "pass, and <code>backward()</code> visits the ops in reverse topological order, adding up the gradient "
    "of every tensor used more than once. The finite-difference check compares it with "
    "(L(θ + ε) − L(θ − ε)) / 2ε.",
)
TRY_NEXT = (
    ("groundup run mlp --set hidden=16 --out runs/try",
     "a much narrower hidden layer: far fewer parameters and a lower test accuracy, still above the linear model."),
    ("groundup run mlp --set epochs=5 --out runs/try",
     "a short training: the test accuracy drops and the curves stop before they flatten."),
    ("groundup run mlp --dataset mnist --quick --out runs/try",
     "the same recipe on real 28x28 digits (downloaded once)."),
)


STAGE = Stage("mlp", "feedforward net on digits: XOR, MLP vs linear, backprop by hand",
              experiments=(xor, digits, backprop_by_hand),
              headline=("MLP test accuracy", "classification.mlp_test_accuracy"),
              title="Feedforward networks and backpropagation",
              better="higher", anchor=("the linear model", "classification.linear_test_accuracy"),
              how=HOW, try_next=TRY_NEXT,
              options=(('hidden', 'MLP hidden units', int), ('epochs', 'MLP epochs (digits)', int)))
