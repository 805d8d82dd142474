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

The training helpers here (``fit_classifier``, ``predict_logits``, ``kfold``, ``load_image_data``,
``confusion_matrix``) are shared with the ``cnn`` stage.

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
from groundup.nn import Module
from groundup.roadmap import claims
from groundup.roadmap.runner import Context, Plot, Stage, StageError, StageResult
from groundup.roadmap.stages.basics import load_digits_arrays

__all__ = ["STAGE", "fit_classifier", "predict_logits", "kfold", "load_image_data", "confusion_matrix",
           "plot_confusion", "mlp_config_for", "MLP_RECIPE"]

# The MLP and how it is trained; the cnn stage compares against exactly this.
MLP_RECIPE = {"hidden_sizes": (256,), "lr": 3e-3, "batch_size": 64}
LINEAR_RECIPE = {"lr": 1e-2, "batch_size": 64}


# ---------------------------------------------------------------------------- shared helpers
def load_image_data(ctx: Context) -> dict[str, Any]:
    """The stage's images: sklearn digits (default) or MNIST (``ctx.options["dataset"] == "mnist"``).

    Returns:
        {"name", "x" (N, H, W) float32 in [0, 1], "y" (N,) int64} for digits, or additionally
        {"x_test", "y_test"} for MNIST's fixed test set. Tiny runs take a small slice.
    """
    if ctx.options.get("dataset", "digits") == "mnist":
        from groundup.data import DatasetUnavailableError, load_mnist

        try:
            mnist = load_mnist()
        except (DatasetUnavailableError, OSError) as err:
            raise StageError(f"--dataset mnist: MNIST is not available ({err}). Run without --dataset to use "
                             "the bundled 8x8 digits.") from err
        n_train = ctx.budget("MNIST training images", full=60000, quick=20000, tiny=256)
        # the cnn stage evaluates nine shifted copies of the test set
        n_test = ctx.budget("MNIST test images", full=10000, quick=5000, tiny=128)
        return {"name": "mnist", "x": mnist.x_train[:n_train], "y": mnist.y_train[:n_train],
                "x_test": mnist.x_test[:n_test], "y_test": mnist.y_test[:n_test]}
    x, y = load_digits_arrays()
    if ctx.tiny:
        x, y = x[:400], y[:400]
    return {"name": "digits", "x": x, "y": y}


def kfold(n: int, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """k (train, test) index pairs over a seeded shuffle of range(n); every index is tested exactly once."""
    folds = np.array_split(np.random.default_rng(seed).permutation(n), k)
    return [(np.sort(np.concatenate(folds[:i] + folds[i + 1:])), np.sort(folds[i])) for i in range(k)]


def predict_logits(model: Module, x: np.ndarray, device: str = "cpu", batch_size: int = 1000) -> np.ndarray:
    """Logits (N, C) as NumPy, in eval mode without building a graph."""
    model.eval()
    out = []
    with gu.no_grad():
        for start in range(0, len(x), batch_size):
            out.append(model(gu.tensor(x[start:start + batch_size], device=device)).numpy())
    model.train()
    return np.concatenate(out)


def _mean_cross_entropy(logits: np.ndarray, y: np.ndarray) -> float:
    shifted = logits - logits.max(1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    return float(-log_probs[np.arange(len(y)), y].mean())


def fit_classifier(ctx: Context, model: Module, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                   y_test: np.ndarray, *, epochs: int, lr: float, batch_size: int = 64, description: str = "training",
                   weight_decay: float = 0.0, rng: np.random.Generator | None = None) -> dict[str, list[float]]:
    """Train with Adam and a cosine learning-rate decay (to lr/100) on shuffled mini-batches.

    Returns:
        per-epoch history: train_loss (mean over the epoch's batches), test_loss, test_accuracy.
    """
    model.to(ctx.device)
    opt = optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    rng = rng if rng is not None else ctx.rng(7)
    steps_per_epoch = math.ceil(len(x_train) / batch_size)
    total, step = epochs * steps_per_epoch, 0
    history: dict[str, list[float]] = {"train_loss": [], "test_loss": [], "test_accuracy": []}
    for _ in ctx.track(range(epochs), description):
        order = rng.permutation(len(x_train))
        losses = []
        for start in range(0, len(order), batch_size):
            for group in opt.param_groups:
                group["lr"] = optim.warmup_cosine_lr(step, lr, lr / 100, 0, total)
            idx = order[start:start + batch_size]
            loss = F.cross_entropy(model(ctx.to_tensor(x_train[idx])), ctx.to_tensor(y_train[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.item()))
            step += 1
        logits = predict_logits(model, x_test, ctx.device)
        history["train_loss"].append(float(np.mean(losses)))
        history["test_loss"].append(_mean_cross_entropy(logits, y_test))
        history["test_accuracy"].append(float((logits.argmax(1) == y_test).mean()))
        ctx.info(f"loss {history['train_loss'][-1]:.3f}  test acc {history['test_accuracy'][-1]:.3f}")
    return history


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int = 10) -> np.ndarray:
    """(n_classes, n_classes) counts: row = true class, column = predicted class."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def plot_confusion(ctx: Context, cm: np.ndarray, filename: str, caption: str, title: str = "") -> Plot:
    fig = ctx.figure(5.4, 4.8)
    ax = fig.subplots()
    shown = ax.imshow(cm, cmap="Blues")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set(xlabel="predicted digit", ylabel="true digit", xticks=range(10), yticks=range(10), title=title)
    fig.colorbar(shown, ax=ax)
    return ctx.savefig(fig, filename, caption)


def mlp_config_for(x: np.ndarray, hidden_sizes: tuple[int, ...] = MLP_RECIPE["hidden_sizes"]) -> MLPConfig:
    """The MLP config for images x (N, H, W)."""
    return MLPConfig(in_features=int(np.prod(x.shape[1:])), hidden_sizes=hidden_sizes, num_classes=10)


# ---------------------------------------------------------------------------- XOR
def _xor_data(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n points around the four corners (+-1, +-1); label 1 where exactly one coordinate is positive."""
    corners = rng.integers(0, 2, size=(n, 2))                               # (n, 2) in {0, 1}
    x = (2 * corners - 1) + 0.35 * rng.standard_normal((n, 2))              # (n, 2)
    return x.astype(np.float32), (corners[:, 0] ^ corners[:, 1]).astype(np.int64)


def _train_full_batch(ctx: Context, model: Module, x: np.ndarray, y: np.ndarray, steps: int, lr: float,
                      description: str) -> None:
    model.to(ctx.device)
    opt = optim.Adam(model.parameters(), lr=lr)
    xt, yt = ctx.to_tensor(x), ctx.to_tensor(y)
    for _ in ctx.track(range(steps), description):
        loss = F.cross_entropy(model(xt), yt)
        opt.zero_grad()
        loss.backward()
        opt.step()


# ---------------------------------------------------------------------------- backprop by hand
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


# ---------------------------------------------------------------------------- the stage
def run(ctx: Context) -> StageResult:
    found, plots, metrics = [], [], {}

    # 1. XOR: what a linear model cannot do -----------------------------------------------------
    xor_x, xor_y = _xor_data(ctx.rng(1), ctx.pick(800, 800, 200))
    n_half = len(xor_x) // 2
    steps = ctx.budget("XOR training steps", full=500, quick=300, tiny=20)
    linear_xor = MLP(MLPConfig(in_features=2, hidden_sizes=(), num_classes=2))
    mlp_xor = MLP(MLPConfig(in_features=2, hidden_sizes=(16,), num_classes=2, activation="tanh"))
    _train_full_batch(ctx, linear_xor, xor_x[:n_half], xor_y[:n_half], steps, 0.05, "XOR: linear model")
    _train_full_batch(ctx, mlp_xor, xor_x[:n_half], xor_y[:n_half], steps, 0.05, "XOR: MLP, 16 tanh units")
    xor_acc = {name: float((predict_logits(m, xor_x[n_half:], ctx.device).argmax(1) == xor_y[n_half:]).mean())
               for name, m in (("linear", linear_xor), ("mlp", mlp_xor))}
    metrics["xor"] = {"n_train": n_half, "n_test": len(xor_x) - n_half, "steps": steps,
                      "linear_test_accuracy": xor_acc["linear"], "mlp_test_accuracy": xor_acc["mlp"]}
    mlp_min = ctx.threshold("XOR: MLP accuracy at least", full=0.95)
    linear_max = ctx.threshold("XOR: linear accuracy at most", full=0.65)
    found.append(claims.check(
        "mlp.xor", "A hidden layer with a nonlinearity solves what a linear model cannot (XOR)",
        xor_acc["mlp"] >= mlp_min and xor_acc["linear"] <= linear_max,
        {"MLP accuracy": xor_acc["mlp"], "linear accuracy": xor_acc["linear"]},
        f"MLP >= {mlp_min}, linear <= {linear_max}",
        f"MLP {xor_acc['mlp']:.3f} >= {mlp_min}, linear {xor_acc['linear']:.3f} <= {linear_max}"))
    fig = ctx.figure(10, 4.4)
    grid = np.linspace(-2.5, 2.5, 200, dtype=np.float32)
    gx, gy = np.meshgrid(grid, grid)
    points = np.stack([gx.ravel(), gy.ravel()], 1)                          # (200*200, 2)
    for ax, (name, m) in zip(fig.subplots(1, 2), (("linear model", linear_xor), ("MLP, 16 tanh units", mlp_xor))):
        region = predict_logits(m, points, ctx.device).argmax(1).reshape(gx.shape)
        ax.contourf(gx, gy, region, levels=[-0.5, 0.5, 1.5], colors=["#cfe2f3", "#f4cccc"])
        test_x, test_y = xor_x[n_half:], xor_y[n_half:]
        ax.scatter(test_x[:, 0], test_x[:, 1], c=np.where(test_y == 1, "#cc0000", "#1155cc"), s=8)
        key = "linear" if m is linear_xor else "mlp"
        ax.set(title=f"{name}: test accuracy {xor_acc[key]:.2f}", xlabel="x1", ylabel="x2", aspect="equal")
    plots.append(ctx.savefig(fig, "xor.png", "XOR: class 1 (red) where exactly one coordinate is positive. A "
                             "linear model can only cut the plane with one straight line; one hidden layer of "
                             "tanh units bends the boundary around the four clusters."))

    # 2. Digits (or MNIST): the MLP against a linear model ----------------------------------------
    data = load_image_data(ctx)
    epochs = ctx.budget("MLP epochs", full=60, quick=30, tiny=2)
    linear_epochs = ctx.budget("linear model epochs", full=60, quick=30, tiny=2)
    if data["name"] == "mnist":
        epochs = ctx.budget("MLP epochs (MNIST)", full=15, quick=4, tiny=1)
        linear_epochs = ctx.budget("linear model epochs (MNIST)", full=5, quick=2, tiny=1)
        splits = [(np.arange(len(data["x"])), None)]
    else:
        k = ctx.budget("cross-validation folds", full=5, quick=5, tiny=2)
        splits = kfold(len(data["x"]), k, ctx.seed)
    fold_results = []
    y_true_all, y_pred_all = [], []
    curves: dict[str, Any] = {}
    for fold, (train, test) in enumerate(splits):
        if test is None:  # MNIST: its own test set
            x_tr, y_tr, x_te, y_te = data["x"], data["y"], data["x_test"], data["y_test"]
        else:
            x_tr, y_tr, x_te, y_te = data["x"][train], data["y"][train], data["x"][test], data["y"][test]
        tag = f"fold {fold + 1}/{len(splits)}" if len(splits) > 1 else data["name"]
        mlp = MLP(mlp_config_for(x_tr))
        h_mlp = fit_classifier(ctx, mlp, x_tr, y_tr, x_te, y_te, epochs=epochs, lr=MLP_RECIPE["lr"],
                               batch_size=MLP_RECIPE["batch_size"], description=f"MLP, {tag}", rng=ctx.rng(10 + fold))
        linear = MLP(mlp_config_for(x_tr, hidden_sizes=()))
        h_lin = fit_classifier(ctx, linear, x_tr, y_tr, x_te, y_te, epochs=linear_epochs, lr=LINEAR_RECIPE["lr"],
                               batch_size=LINEAR_RECIPE["batch_size"], description=f"linear, {tag}",
                               rng=ctx.rng(20 + fold))
        y_true_all.append(y_te)
        y_pred_all.append(predict_logits(mlp, x_te, ctx.device).argmax(1))
        fold_results.append({"mlp_test_accuracy": h_mlp["test_accuracy"][-1],
                             "linear_test_accuracy": h_lin["test_accuracy"][-1], "n_test": len(y_te)})
        if fold == 0:
            curves = {"mlp": h_mlp, "linear": h_lin}
    mlp_acc = float(np.mean([f["mlp_test_accuracy"] for f in fold_results]))
    linear_acc = float(np.mean([f["linear_test_accuracy"] for f in fold_results]))
    n_params = {"mlp": mlp.num_parameters(), "linear": linear.num_parameters()}
    cm = confusion_matrix(np.concatenate(y_true_all), np.concatenate(y_pred_all))
    metrics["classification"] = {
        "dataset": data["name"], "protocol": f"{len(splits)}-fold cross-validation" if len(splits) > 1
        else "train/test split", "mlp_test_accuracy": mlp_acc, "linear_test_accuracy": linear_acc,
        "mlp_parameters": n_params["mlp"], "linear_parameters": n_params["linear"], "mlp_hidden_sizes":
        list(MLP_RECIPE["hidden_sizes"]), "epochs": epochs, "folds": fold_results, "curves_first_fold": curves,
        "confusion_matrix": cm.tolist()}
    target = (ctx.threshold("MLP test accuracy (MNIST)", full=0.98, quick=0.97) if data["name"] == "mnist"
              else ctx.threshold("MLP test accuracy (digits)", full=0.97, quick=0.965))
    where = (f"MNIST's test digits ({len(data['y_test']):,})" if data["name"] == "mnist"
             else "held-out digits (mean over the folds)")
    found.append(claims.at_least("mlp.accuracy", f"A feedforward net classifies {where}", "test accuracy", mlp_acc,
                                 target))
    found.append(claims.greater(
        "mlp.beats_linear", "A hidden layer with a nonlinearity beats the linear model (softmax regression) on "
        f"{data['name']}", "MLP accuracy", mlp_acc, "linear accuracy", linear_acc))

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
    plots.append(ctx.savefig(fig, "loss_curves.png", "Training and test loss, and test accuracy, per epoch "
                             f"({'the first fold' if len(splits) > 1 else data['name']}): MLP solid, linear "
                             "model dashed. Test loss rising while training loss falls would be overfitting."))
    judged = ("every digit, each predicted by the fold's model that did not train on it" if len(splits) > 1
              else "the test set")
    plots.append(plot_confusion(ctx, cm, "confusion.png", f"Confusion matrix of the MLP on {judged}: the "
                                "diagonal counts correct answers; off-diagonal cells show which digits it "
                                "mistakes for which.", title="MLP confusion matrix"))
    if len(splits) > 1:
        fig = ctx.figure(6, 3.4)
        ax = fig.subplots()
        idx = np.arange(len(fold_results))
        ax.bar(idx - 0.2, [f["linear_test_accuracy"] for f in fold_results], 0.4, label="linear", color="C7")
        ax.bar(idx + 0.2, [f["mlp_test_accuracy"] for f in fold_results], 0.4, label="MLP", color="C2")
        low = min(min(f["linear_test_accuracy"], f["mlp_test_accuracy"]) for f in fold_results)
        ax.set(xticks=idx, xticklabels=[f"fold {i + 1}" for i in idx], ylabel="test accuracy",
               ylim=(max(0.0, low - 0.03), 1.0))
        ax.legend()
        plots.append(ctx.savefig(fig, "folds.png", "Test accuracy on each cross-validation fold. With 360 test "
                                 "digits one mistake is 0.3 points, so single splits differ by a point or more; the "
                                 "claims use the mean over folds."))

    # 3. Backprop by hand -------------------------------------------------------------------------
    digits_x, digits_y = load_digits_arrays()
    pick = ctx.rng(3).choice(len(digits_x), 32, replace=False)
    check = backprop_check(digits_x[pick].reshape(32, -1).astype(np.float64), digits_y[pick], ctx.rng(4))
    metrics["backprop_by_hand"] = check
    bp_threshold = ctx.threshold("backprop by hand: max relative error", full=1e-6)
    worst = max(check["max_hand_vs_engine"], check["max_hand_vs_finite_differences"])
    found.append(claims.check(
        "mlp.backprop", "Backpropagation computes exactly the derivatives that finite differences estimate "
        "(hand-derived gradients = groundup autograd = finite differences, float64)", worst < bp_threshold,
        {"max rel. error hand vs engine": check["max_hand_vs_engine"],
         "max rel. error hand vs finite differences": check["max_hand_vs_finite_differences"]},
        bp_threshold, f"hand vs engine {check['max_hand_vs_engine']:.1e}, hand vs finite differences "
        f"{check['max_hand_vs_finite_differences']:.1e}, both < {bp_threshold:.0e}"))
    rows = "".join(f"<tr><td><code>d{html.escape(name)}</code></td><td class=num>{r['grad_norm']:.3e}</td>"
                   f"<td class=num>{r['hand_vs_engine']:.1e}</td><td class=num>{r['hand_vs_finite_differences']:.1e}"
                   f"</td></tr>" for name, r in check["per_parameter"].items())
    section = (_DERIVATION + f"<p>On a batch of 32 digits ({check['n_parameters']} parameters, loss "
               f"{check['loss']:.4f}):</p><table><tr><th>gradient</th><th>norm</th><th>rel. error hand vs engine"
               f"</th><th>rel. error hand vs finite differences</th></tr>{rows}</table>")

    summary = [
        f"A feedforward network stacks linear layers with a nonlinearity between them. On XOR, a linear model is "
        f"stuck at chance ({xor_acc['linear']:.0%} test accuracy) because no straight line separates the classes; "
        f"16 tanh hidden units solve it ({xor_acc['mlp']:.0%}).",
        f"On {data['name']}, an MLP with {MLP_RECIPE['hidden_sizes'][0]} ReLU hidden units ({n_params['mlp']:,} "
        f"parameters) reaches {mlp_acc:.1%} test accuracy against {linear_acc:.1%} for the same model without its "
        f"hidden layer ({n_params['linear']:,} parameters)"
        + (f", averaged over {len(splits)} cross-validation folds so that every digit is tested once." if
           len(splits) > 1 else "."),
        "Training is backpropagation plus Adam: the section 'Backpropagation by hand' derives every gradient of a "
        f"two-layer net, computes them in NumPy, and finds them equal to groundup's autograd (relative error "
        f"{check['max_hand_vs_engine']:.0e}) and to finite differences "
        f"({check['max_hand_vs_finite_differences']:.0e}).",
    ]
    return StageResult(headline=("MLP test accuracy", mlp_acc), summary=summary, metrics=metrics, claims=found,
                       plots=plots, sections=[("Backpropagation by hand", section)])


STAGE = Stage("mlp", "feedforward net on digits: XOR, MLP vs linear, backprop by hand", run=run,
              title="Feedforward networks and backpropagation")
