"""Stage ``basics``: supervised vs unsupervised learning on scikit-learn's 8x8 digits.

Supervised learning fits inputs to given outputs:
  1. linear regression (predict the right half of a digit from its left half), solved two ways:
     the closed form (normal equations) and gradient descent with groundup's autograd;
  2. softmax regression (a linear classifier) trained with groundup, scikit-learn's
     LogisticRegression as an independent oracle.
Unsupervised learning finds structure without labels:
  3. k-means: do the 10 clusters agree with the true digits (purity)? Centroids drawn as images;
  4. PCA: two principal components, a scatter coloured by digit (colours used only for the plot).

References: Bishop, "Pattern Recognition and Machine Learning" (2006), ch. 3, 4.3, 9.1, 12.1;
Arthur & Vassilvitskii, "k-means++" (2007).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

import groundup as gu
from groundup import functional as F
from groundup import optim
from groundup.models.mlp import MLP, MLPConfig
from groundup.roadmap import claims
from groundup.roadmap.runner import Context, Plot, Stage, StageResult

__all__ = ["STAGE", "load_digits_arrays", "split_indices", "kmeans", "pca", "cluster_purity", "image_grid"]


# ---------------------------------------------------------------------------- data
def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Digits as X float32 (N, 8, 8) in [0, 1] and y int64 (N,): groundup.data if present, else scikit-learn."""
    try:
        from groundup.data import load_digits
    except ImportError:
        from sklearn.datasets import load_digits as sklearn_digits

        bunch = sklearn_digits()
        return (bunch.images / 16.0).astype(np.float32), bunch.target.astype(np.int64)
    return load_digits()


def split_indices(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random (train, test) split of range(n)."""
    order = np.random.default_rng(seed).permutation(n)
    n_test = max(1, round(n * test_fraction))
    return np.sort(order[n_test:]), np.sort(order[:n_test])


# ---------------------------------------------------------------------------- unsupervised algorithms
def kmeans(x: np.ndarray, k: int, rng: np.random.Generator, n_init: int = 5, max_iter: int = 100,
           ) -> tuple[np.ndarray, np.ndarray, float]:
    """Lloyd's k-means with k-means++ seeding; the best of ``n_init`` runs (lowest inertia).

    Args:
        x: (N, D) points.
    Returns:
        centroids (k, D), assignment (N,) int, inertia (sum of squared distances to the centroid).
    """
    best: tuple[np.ndarray, np.ndarray, float] | None = None
    sq_norms = (x * x).sum(1)                                               # (N,)
    for _ in range(n_init):
        centroids = [x[rng.integers(len(x))]]
        for _ in range(1, k):  # k-means++: next centroid drawn with probability ~ squared distance
            d2 = ((x[:, None, :] - np.array(centroids)[None]) ** 2).sum(-1).min(1)  # (N,)
            centroids.append(x[rng.choice(len(x), p=d2 / d2.sum())])
        c = np.array(centroids)                                             # (k, D)
        assign = np.full(len(x), -1)
        for _ in range(max_iter):
            d2 = sq_norms[:, None] - 2 * x @ c.T + (c * c).sum(1)[None]     # (N, k)
            new = d2.argmin(1)
            if np.array_equal(new, assign):
                break
            assign = new
            for j in range(k):
                members = x[assign == j]
                if len(members):  # an empty cluster keeps its centroid
                    c[j] = members.mean(0)
        inertia = float(((x - c[assign]) ** 2).sum())
        if best is None or inertia < best[2]:
            best = (c.copy(), assign.copy(), inertia)
    assert best is not None
    return best


def cluster_purity(assign: np.ndarray, labels: np.ndarray) -> float:
    """Share of points whose cluster's majority label is their own label (chance: the largest class share)."""
    total = sum(np.bincount(labels[assign == j]).max() for j in np.unique(assign))
    return float(total / len(labels))


def pca(x: np.ndarray, n_components: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Principal components by SVD of the centred data.

    Returns:
        projections (N, n_components), components (n_components, D), explained variance ratio (n_components,).
    """
    centred = x - x.mean(0)                                                 # (N, D)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)                  # vt: (D, D) rows = directions
    variance = s ** 2 / (len(x) - 1)
    return centred @ vt[:n_components].T, vt[:n_components], variance[:n_components] / variance.sum()


def _knn_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                  k: int = 5) -> float:
    d2 = ((test_x[:, None, :] - train_x[None]) ** 2).sum(-1)               # (N_test, N_train)
    nearest = np.argsort(d2, axis=1)[:, :k]                                 # (N_test, k)
    votes = np.array([np.bincount(train_y[row], minlength=10).argmax() for row in nearest])
    return float((votes == test_y).mean())


# ---------------------------------------------------------------------------- plots
def image_grid(ctx: Context, images: np.ndarray, titles: list[str], filename: str, caption: str, cols: int = 10,
               cmap: str | list[str] = "gray_r", scale: str = "fixed", tile_inches: float = 1.0) -> Plot:
    """Tile small images (n, h, w) into one picture, a title above each, and save it.

    Drawn as a single RGB image on one Axes: a figure of dozens of Axes takes seconds to lay out.

    Args:
        cmap: one colormap name, or one per image.
        scale: "fixed" (values in [0, 1]), "each" (each image from its min to its max), or
            "symmetric" (each image in [-m, m], m its largest magnitude; 0 is the colormap's middle).
    """
    from matplotlib import colormaps

    n, h, w = images.shape
    rows = math.ceil(n / cols)
    gap, title_space = max(1, w // 4), max(3, round(h * 0.45))            # in image pixels
    canvas = np.ones((rows * (h + title_space), cols * (w + gap), 3))      # white RGB
    cmaps = [cmap] * n if isinstance(cmap, str) else list(cmap)
    for i, image in enumerate(images.astype(np.float64)):
        if scale == "fixed":
            low, high = 0.0, 1.0
        elif scale == "each":
            low, high = float(image.min()), float(image.max())
        elif scale == "symmetric":
            high = float(np.abs(image).max())
            low = -high
        else:
            raise ValueError(f"image_grid: scale must be 'fixed', 'each' or 'symmetric', got {scale!r}")
        if high > low:
            unit = np.clip((image - low) / (high - low), 0.0, 1.0)
        else:  # a constant image: the colormap's bottom (a dead feature map), or its middle (an all-zero filter)
            unit = np.full_like(image, 0.5 if scale == "symmetric" else 0.0)
        top, left = (i // cols) * (h + title_space) + title_space, (i % cols) * (w + gap) + gap // 2
        canvas[top:top + h, left:left + w] = colormaps[cmaps[i]](unit)[..., :3]
    width = tile_inches * cols
    fig = ctx.figure(width, width * canvas.shape[0] / canvas.shape[1], layout=None)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(canvas, interpolation="nearest")
    ax.axis("off")
    for i, title in enumerate(titles):
        x = (i % cols) * (w + gap) + gap // 2 + w / 2 - 0.5
        y = (i // cols) * (h + title_space) + title_space - 0.8
        ax.text(x, y, title, ha="center", va="bottom", fontsize=7)
    return ctx.savefig(fig, filename, caption)


# ---------------------------------------------------------------------------- the stage
def run(ctx: Context) -> StageResult:
    images, labels = load_digits_arrays()                                   # (N, 8, 8), (N,)
    if ctx.tiny:
        images, labels = images[:300], labels[:300]
    x = images.reshape(len(images), -1).astype(np.float64)                  # (N, 64)
    train, test = split_indices(len(x), 0.2, ctx.seed)
    metrics: dict[str, Any] = {"n_train": len(train), "n_test": len(test)}
    plots, found = [], []

    # 1. Linear regression: right half of a digit from its left half, two ways --------------------
    left = images[:, :, :4].reshape(len(images), -1).astype(np.float64)    # (N, 32) inputs
    right = images[:, :, 4:].reshape(len(images), -1).astype(np.float64)   # (N, 32) targets
    mean_in = left[train].mean(0)
    a_train, a_test = left[train] - mean_in, left[test] - mean_in           # centred, so the bias is the mean
    b_train, b_test = right[train], right[test]
    ridge = 1e-2  # a small L2 penalty makes the minimiser unique (some pixels are almost always blank)
    n = len(a_train)
    # closed form: minimise (1/N)|A W + b - B|^2 + ridge |W|^2  =>  (A^T A / N + ridge I) W = A^T (B - mean B) / N
    w_closed = np.linalg.solve(a_train.T @ a_train / n + ridge * np.eye(32),
                               a_train.T @ (b_train - b_train.mean(0)) / n)  # (32, 32)
    b_closed = b_train.mean(0)                                               # (32,)

    def ridge_loss(pred: np.ndarray, target: np.ndarray, w: np.ndarray) -> float:
        return float(((pred - target) ** 2).sum(1).mean() + ridge * (w ** 2).sum())

    loss_closed = ridge_loss(a_train @ w_closed + b_closed, b_train, w_closed)
    # gradient descent on the same loss with groundup's autograd (float64), step 1/L with L the smoothness
    steps = ctx.budget("gradient-descent steps", full=1000, quick=500, tiny=50)
    lipschitz = 2 * (np.linalg.eigvalsh(a_train.T @ a_train / n).max() + ridge)
    lr = 1.0 / lipschitz
    a_t, b_t = ctx.to_tensor(a_train, dtype=gu.float64), ctx.to_tensor(b_train, dtype=gu.float64)
    w = gu.zeros(32, 32, dtype=gu.float64, device=ctx.device, requires_grad=True)
    bias = gu.zeros(32, dtype=gu.float64, device=ctx.device, requires_grad=True)
    opt = optim.SGD([w, bias], lr=lr)                                    # plain gradient descent
    gd_loss, gd_dist = [], []
    for step in ctx.track(range(steps), "linear regression: gradient descent"):
        loss = ((a_t @ w + bias - b_t) ** 2).sum(dim=1).mean() + ridge * (w * w).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 0 or step == steps - 1:
            gd_loss.append((step, float(loss.item())))
            gd_dist.append((step, float(np.linalg.norm(w.detach().numpy() - w_closed) / np.linalg.norm(w_closed))))
    w_gd, b_gd = w.detach().numpy(), bias.detach().numpy()
    weight_rel_diff = float(np.linalg.norm(w_gd - w_closed) / np.linalg.norm(w_closed))
    test_mse_closed = float(((a_test @ w_closed + b_closed - b_test) ** 2).mean())
    test_mse_gd = float(((a_test @ w_gd + b_gd - b_test) ** 2).mean())
    test_mse_mean = float(((b_closed - b_test) ** 2).mean())  # baseline: always predict the mean half
    metrics["linear_regression"] = {
        "ridge": ridge, "steps": steps, "lr": lr, "train_loss_closed_form": loss_closed,
        "train_loss_gd": gd_loss[-1][1], "weight_rel_diff": weight_rel_diff, "test_mse_closed_form": test_mse_closed,
        "test_mse_gd": test_mse_gd, "test_mse_predict_mean": test_mse_mean,
        "test_r2": 1.0 - test_mse_closed / test_mse_mean, "gd_loss_curve": [v for _, v in gd_loss],
        "gd_weight_distance_curve": [v for _, v in gd_dist], "curve_steps": [s for s, _ in gd_loss],
    }
    threshold = ctx.threshold("linear regression: relative weight difference", full=1e-6, quick=1e-4)
    found.append(claims.at_most(
        "basics.gd_closed_form", "Gradient descent and the closed-form solution of linear regression reach the "
        "same weights", "relative weight difference", weight_rel_diff, threshold))

    fig = ctx.figure(10, 3.6)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot([s for s, _ in gd_loss], [max(v - loss_closed, 1e-16) for _, v in gd_loss])  # exact ties -> 1e-16
    ax1.set_yscale("log")
    ax1.set(xlabel="gradient-descent step", ylabel="loss - closed-form loss", title="loss gap")
    ax2.plot([s for s, _ in gd_dist], [v for _, v in gd_dist], color="C1")
    ax2.set_yscale("log")
    ax2.axhline(threshold, color="gray", ls="--", lw=1, label=f"claim threshold {threshold:g}")
    ax2.set(xlabel="gradient-descent step", ylabel="|W_gd - W_closed| / |W_closed|", title="distance in weights")
    ax2.legend()
    plots.append(ctx.savefig(fig, "linreg_gd.png", "Gradient descent closing in on the closed-form solution: the "
                             "loss gap and the distance between the weights, both on a log scale."))
    shown = test[:8]
    predicted_right = (a_test[:8] @ w_closed + b_closed).reshape(-1, 8, 4)  # (8, 8 rows, 4 columns)
    completed = np.concatenate([images[shown, :, :4], predicted_right], axis=2)  # (8, 8, 8)
    plots.append(image_grid(ctx, np.concatenate([images[shown], completed]),
                            ["original"] * len(shown) + ["right predicted"] * len(shown), "linreg_completions.png",
                            "Held-out digits (top row) and the same digits with their right half (columns 5 to 8) "
                            "predicted from the left half by linear regression (bottom row).", cols=len(shown)))

    # 2. Softmax regression: a linear classifier trained with groundup ----------------------------
    epochs = ctx.budget("softmax regression epochs", full=100, quick=60, tiny=3)
    target_acc = ctx.threshold("softmax regression test accuracy", full=0.93)
    model = MLP(MLPConfig(in_features=64, hidden_sizes=(), num_classes=10))  # no hidden layer = linear
    x_train, y_train = ctx.to_tensor(x[train], dtype=gu.float32), ctx.to_tensor(labels[train])
    x_test, y_test = ctx.to_tensor(x[test], dtype=gu.float32), ctx.to_tensor(labels[test])
    model.to(ctx.device)
    opt = optim.Adam(model.parameters(), lr=1e-2)
    rng = ctx.rng(1)
    history: dict[str, list[float]] = {"train_loss": [], "test_loss": [], "test_accuracy": []}
    batch = 64
    total_steps, step = epochs * math.ceil(len(train) / batch), 0
    for _ in ctx.track(range(epochs), "softmax regression"):
        order = rng.permutation(len(train))
        for start in range(0, len(order), batch):
            for group in opt.param_groups:
                group["lr"] = optim.warmup_cosine_lr(step, 1e-2, 1e-4, 0, total_steps)
            idx = order[start:start + batch]
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
        with gu.no_grad():
            history["train_loss"].append(float(F.cross_entropy(model(x_train), y_train).item()))
            logits = model(x_test)
            history["test_loss"].append(float(F.cross_entropy(logits, y_test).item()))
            history["test_accuracy"].append(float((logits.numpy().argmax(1) == labels[test]).mean()))
        ctx.info(f"test acc {history['test_accuracy'][-1]:.3f}")
    softmax_acc = history["test_accuracy"][-1]
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():  # tiny runs cut the oracle's iterations on purpose
        warnings.simplefilter("ignore", ConvergenceWarning)
        oracle = LogisticRegression(max_iter=ctx.pick(3000, 3000, 100)).fit(x[train], labels[train])
    sklearn_acc = float(oracle.score(x[test], labels[test]))
    metrics["softmax_regression"] = {"epochs": epochs, "test_accuracy": softmax_acc,
                                     "sklearn_logistic_regression_test_accuracy": sklearn_acc, **history}
    found.append(claims.at_least(
        "basics.supervised", "Supervised learning: a linear classifier trained on labelled digits classifies "
        "held-out digits far above chance (0.1)", "test accuracy", softmax_acc, target_acc))
    agree = ctx.threshold("softmax regression vs scikit-learn: max accuracy gap", full=0.03)
    found.append(claims.at_most(
        "basics.oracle", "Our softmax regression agrees with scikit-learn's LogisticRegression (an independent "
        "implementation)", "accuracy gap", abs(softmax_acc - sklearn_acc), agree))
    weights = model.net[0].weight.detach().numpy().reshape(10, 8, 8)       # (classes, 8, 8)
    plots.append(image_grid(ctx, weights, [f"class {d}" for d in range(10)], "softmax_weights.png",
                            "Softmax regression's weights, one 8x8 template per class (red: evidence for the "
                            "class, blue: against). A linear classifier scores a digit by its overlap with each "
                            "template.", cmap="RdBu_r", scale="symmetric"))
    fig = ctx.figure(10, 3.4)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(range(1, epochs + 1), history["train_loss"], label="train")
    ax1.plot(range(1, epochs + 1), history["test_loss"], label="test")
    ax1.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax1.legend()
    ax2.plot(range(1, epochs + 1), history["test_accuracy"], color="C2")
    ax2.axhline(sklearn_acc, color="gray", ls="--", lw=1, label="scikit-learn LogisticRegression")
    ax2.set(xlabel="epoch", ylabel="test accuracy", title="test accuracy")
    ax2.legend()
    plots.append(ctx.savefig(fig, "softmax_training.png", "Softmax regression training: cross-entropy on the "
                             "training and test digits, and test accuracy, per epoch (dashed: scikit-learn's "
                             "LogisticRegression on the same split)."))

    # 3. k-means: clusters found without labels, compared with the labels afterwards -------------
    n_init = ctx.budget("k-means restarts", full=10, quick=5, tiny=1)
    centroids, assign, inertia = kmeans(x, 10, ctx.rng(2), n_init=n_init)
    purity = cluster_purity(assign, labels)
    chance = float(np.bincount(labels).max() / len(labels))
    purity_target = ctx.threshold("k-means purity", full=0.6)
    from sklearn.cluster import KMeans

    sk_inertia = float(KMeans(10, n_init=n_init, random_state=ctx.seed).fit(x).inertia_)
    metrics["kmeans"] = {"k": 10, "purity": purity, "chance_purity": chance, "inertia": inertia,
                         "sklearn_inertia": sk_inertia, "restarts": n_init}
    found.append(claims.at_least(
        "basics.kmeans", "Unsupervised learning: k-means clusters of digits agree with the true digit far above "
        "chance (purity; chance is about 0.1)", "purity", purity, purity_target))
    majority = [int(np.bincount(labels[assign == j], minlength=10).argmax()) if (assign == j).any() else -1
                for j in range(10)]
    shares = [float((labels[assign == j] == majority[j]).mean()) if (assign == j).any() else 0.0 for j in range(10)]
    plots.append(image_grid(ctx, centroids.reshape(10, 8, 8),
                            [f"{m}: {s:.0%}" for m, s in zip(majority, shares)], "kmeans_centroids.png",
                            "The 10 k-means centroids as images. k-means never saw a label; the title over each "
                            "centroid gives its cluster's most common true digit and that digit's share, computed "
                            "afterwards."))

    # 4. PCA: two directions of largest variance ---------------------------------------------------
    projected, components, ratio = pca(x, 2)
    from sklearn.decomposition import PCA

    sk_ratio = PCA(2).fit(x).explained_variance_ratio_
    knn_target = ctx.threshold("5-NN accuracy in the 2-D PCA plane", full=0.4)
    knn = _knn_accuracy(projected[train], labels[train], projected[test], labels[test])
    metrics["pca"] = {"explained_variance_ratio": ratio.tolist(), "sklearn_explained_variance_ratio":
                      sk_ratio.tolist(), "knn5_accuracy_2d": knn}
    found.append(claims.at_least(
        "basics.pca", "Two principal components, found without labels, already separate several digits (a "
        "5-nearest-neighbour vote in the 2-D plane, chance 0.1)", "5-NN accuracy in 2-D", knn, knn_target))
    fig = ctx.figure(7, 6)
    ax = fig.subplots()
    scatter = ax.scatter(projected[:, 0], projected[:, 1], c=labels, cmap="tab10", s=8, alpha=0.8)
    for d in range(10):
        cx, cy = np.median(projected[labels == d], 0)
        ax.text(cx, cy, str(d), fontsize=15, weight="bold", ha="center", va="center",
                bbox=dict(boxstyle="circle,pad=0.2", fc="white", alpha=0.7))
    ax.set(xlabel=f"PC 1 ({ratio[0]:.1%} of variance)", ylabel=f"PC 2 ({ratio[1]:.1%} of variance)",
           title="digits projected on two principal components")
    fig.colorbar(scatter, ax=ax, ticks=range(10), label="true digit (used only for colour)")
    plots.append(ctx.savefig(fig, "pca_scatter.png", "Every digit projected on the two directions of largest "
                             "variance. PCA used no labels; the colours show the true digits, and several "
                             "(0, 4, 6, 3) already form their own regions."))

    summary = [
        "Supervised learning is given inputs and the outputs to predict; unsupervised learning is given inputs "
        "only and looks for structure. Both are run here on 1,797 handwritten digits of 8x8 pixels.",
        f"Linear regression predicts the right half of a digit from its left half (test R^2 "
        f"{metrics['linear_regression']['test_r2']:.2f}). Its closed-form solution and {steps} steps of gradient "
        f"descent through groundup's autograd end up with the same weights (relative difference "
        f"{weight_rel_diff:.1e}).",
        f"Softmax regression, a linear classifier, reaches {softmax_acc:.1%} test accuracy "
        f"(scikit-learn's LogisticRegression on the same split: {sklearn_acc:.1%}); its weights are one template "
        "per digit.",
        f"Without labels, k-means groups the digits into 10 clusters whose purity is {purity:.1%} (chance "
        f"{chance:.1%}), and PCA's first two components ({ratio.sum():.1%} of the variance) already separate "
        f"several digits: a 5-nearest-neighbour vote in that plane is right {knn:.1%} of the time.",
    ]
    return StageResult(headline=("softmax test accuracy", softmax_acc), summary=summary, metrics=metrics,
                       claims=found, plots=plots)


STAGE = Stage("basics", "supervised vs unsupervised learning on 8x8 digits: regression, softmax, k-means, PCA",
              run=run, title="Machine-learning basics: linear and softmax regression, k-means and PCA on digits")
