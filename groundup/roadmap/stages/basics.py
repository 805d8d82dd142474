"""Stage ``basics``: supervised vs unsupervised learning on scikit-learn's 8x8 digits.

Supervised learning fits inputs to given outputs:
  1. linear regression (predict the right half of a digit from its left half), solved two ways:
     the closed form (normal equations) and gradient descent with groundup's autograd (the loop is
     the lesson, so it is written out);
  2. softmax regression (a linear classifier) trained with groundup, scikit-learn's
     LogisticRegression as an independent oracle.
Unsupervised learning finds structure without labels:
  3. k-means: do the 10 clusters agree with the true digits (purity)? Centroids drawn as images;
  4. PCA: two principal components, a scatter coloured by digit (colours used only for the plot).

References: Bishop, "Pattern Recognition and Machine Learning" (2006), ch. 3, 4.3, 9.1, 12.1;
Arthur & Vassilvitskii, "k-means++" (2007).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

import groundup as gu
from groundup import optim
from groundup.models.mlp import MLP, MLPConfig
from groundup.roadmap import Finding, claims
from groundup.roadmap.classify import fit_classifier, load_digits_arrays
from groundup.roadmap.plots import image_grid
from groundup.roadmap.runner import Context, Stage

__all__ = ["STAGE", "split_indices", "kmeans", "pca", "cluster_purity", "linear_regression", "softmax_regression",
           "k_means", "principal_components"]

N_CLASSES = 10


# ---------------------------------------------------------------------------- data
def _digits(ctx: Context, state: dict[str, Any]) -> dict[str, Any]:
    """The digits, their (N, 64) pixels and a seeded 80/20 split, loaded once per run."""
    if "digits" not in state:
        images, labels = load_digits_arrays()                               # (N, 8, 8), (N,)
        if ctx.tiny:
            images, labels = images[:300], labels[:300]
        train, test = split_indices(len(images), 0.2, ctx.seed)
        state["digits"] = {"images": images, "labels": labels, "train": train, "test": test,
                           "x": images.reshape(len(images), -1).astype(np.float64)}   # (N, 64)
    return state["digits"]


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


# ---------------------------------------------------------------------------- 1. linear regression
def linear_regression(ctx: Context, state: dict[str, Any]) -> Finding:
    """The right half of a digit from its left half: closed form against gradient descent (hand-written loop)."""
    d = _digits(ctx, state)
    images, train, test = d["images"], d["train"], d["test"]
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
    loss_closed = float(((a_train @ w_closed + b_closed - b_train) ** 2).sum(1).mean() + ridge * (w_closed ** 2).sum())
    # gradient descent on the same loss with groundup's autograd (float64), step 1/L with L the smoothness
    steps = ctx.budget("gradient-descent steps", full=1000, quick=500, tiny=50)
    lr = 1.0 / (2 * (np.linalg.eigvalsh(a_train.T @ a_train / n).max() + ridge))
    a_t, b_t = ctx.to_tensor(a_train, dtype=gu.float64), ctx.to_tensor(b_train, dtype=gu.float64)
    w = gu.zeros(32, 32, dtype=gu.float64, device=ctx.device, requires_grad=True)
    bias = gu.zeros(32, dtype=gu.float64, device=ctx.device, requires_grad=True)
    opt = optim.SGD([w, bias], lr=lr)                                        # plain gradient descent
    gd_loss, gd_dist, curve_steps = [], [], []
    for step in ctx.track(range(steps), "linear regression: gradient descent"):
        loss = ((a_t @ w + bias - b_t) ** 2).sum(dim=1).mean() + ridge * (w * w).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 0 or step == steps - 1:
            curve_steps.append(step)
            gd_loss.append(float(loss.item()))
            gd_dist.append(float(np.linalg.norm(w.detach().numpy() - w_closed) / np.linalg.norm(w_closed)))
    w_gd, b_gd = w.detach().numpy(), bias.detach().numpy()
    weight_rel_diff = float(np.linalg.norm(w_gd - w_closed) / np.linalg.norm(w_closed))
    mse = {name: float(((pred - b_test) ** 2).mean()) for name, pred in (
        ("closed", a_test @ w_closed + b_closed), ("gd", a_test @ w_gd + b_gd), ("mean", b_closed + 0 * b_test))}
    threshold = ctx.threshold("linear regression: relative weight difference", full=1e-6, quick=1e-4)
    fig = ctx.figure(10, 3.6)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(curve_steps, [max(v - loss_closed, 1e-16) for v in gd_loss])  # exact ties -> 1e-16
    ax1.set_yscale("log")
    ax1.set(xlabel="gradient-descent step", ylabel="loss - closed-form loss", title="loss gap")
    ax2.plot(curve_steps, gd_dist, color="C1")
    ax2.set_yscale("log")
    ax2.axhline(threshold, color="gray", ls="--", lw=1, label=f"claim threshold {threshold:g}")
    ax2.set(xlabel="gradient-descent step", ylabel="|W_gd - W_closed| / |W_closed|", title="distance in weights")
    ax2.legend()
    shown = test[:8]
    completed = np.concatenate([images[shown, :, :4], (a_test[:8] @ w_closed + b_closed).reshape(-1, 8, 4)],
                               axis=2)                                       # (8, 8, 8): left real, right predicted
    metrics = {"linear_regression": {
        "ridge": ridge, "steps": steps, "lr": lr, "train_loss_closed_form": loss_closed,
        "train_loss_gd": gd_loss[-1], "weight_rel_diff": weight_rel_diff, "test_mse_closed_form": mse["closed"],
        "test_mse_gd": mse["gd"], "test_mse_predict_mean": mse["mean"], "test_r2": 1.0 - mse["closed"] / mse["mean"],
        "gd_loss_curve": gd_loss, "gd_weight_distance_curve": gd_dist, "curve_steps": curve_steps,
        "n_images": len(images), "image_side": images.shape[1]}, "n_train": len(train), "n_test": len(test)}
    return Finding(
        title="Linear regression: the closed form and gradient descent", metrics=metrics,
        claims=[claims.claim("basics.gd_closed_form", "Gradient descent and the closed-form solution of linear "
                             "regression reach the same weights",
                             claims.le("relative weight difference", weight_rel_diff, threshold))],
        plots=[ctx.savefig(fig, "linreg_gd.png", "Gradient descent closing in on the closed-form solution: the "
                           "loss gap and the distance between the weights, both on a log scale."),
               image_grid(ctx, np.concatenate([images[shown], completed]),
                          ["original"] * len(shown) + ["right predicted"] * len(shown), "linreg_completions.png",
                          "Held-out digits (top row) and the same digits with their right half predicted from the "
                          "left half by linear regression (bottom row).", cols=len(shown))],
        text=["Supervised learning is given inputs and the outputs to predict; unsupervised learning is given "
              f"inputs only and looks for structure. Both are run here on {len(images):,} handwritten digits of "
              f"{images.shape[1]}x{images.shape[1]} pixels.",
              f"Linear regression predicts the right half of a digit from its left half (test R^2 "
              f"{metrics['linear_regression']['test_r2']:.2f}). Its closed-form solution and {steps} steps of "
              f"gradient descent through groundup's autograd end up with the same weights (relative difference "
              f"{weight_rel_diff:.1e})."])


# ---------------------------------------------------------------------------- 2. softmax regression
def softmax_regression(ctx: Context, state: dict[str, Any]) -> Finding:
    """A linear classifier trained with the Trainer, and scikit-learn's LogisticRegression as the oracle."""
    d = _digits(ctx, state)
    x, labels, train, test = d["x"].astype(np.float32), d["labels"], d["train"], d["test"]
    epochs = ctx.budget("softmax regression epochs", full=100, quick=60, tiny=3, option="epochs")
    target_acc = ctx.threshold("softmax regression test accuracy", full=0.93)
    model = MLP(MLPConfig(in_features=x.shape[1], hidden_sizes=(), num_classes=N_CLASSES))  # no hidden layer
    lr = ctx.option("lr", 1e-2)
    history = fit_classifier(ctx, model, x[train], labels[train], x[test], labels[test], epochs=epochs, lr=lr,
                             batch_size=64, description="softmax regression", rng=ctx.rng(1), seed_offset=1)
    softmax_acc = history["test_accuracy"][-1]
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():  # tiny runs cut the oracle's iterations on purpose
        warnings.simplefilter("ignore", ConvergenceWarning)
        oracle = LogisticRegression(max_iter=ctx.pick(3000, 3000, 100)).fit(d["x"][train], labels[train])
    sklearn_acc = float(oracle.score(d["x"][test], labels[test]))
    agree = ctx.threshold("softmax regression vs scikit-learn: max accuracy gap", full=0.03)
    side = d["images"].shape[1]
    weights = model.net[0].weight.detach().numpy().reshape(N_CLASSES, side, side)   # (classes, 8, 8)
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
    return Finding(
        title="Softmax regression: a linear classifier",
        metrics={"softmax_regression": {"epochs": epochs, "test_accuracy": softmax_acc, "chance": 1 / N_CLASSES,
                                        "sklearn_logistic_regression_test_accuracy": sklearn_acc, **history,
                                        "final_test_accuracy": softmax_acc}},
        claims=[claims.claim("basics.supervised", "Supervised learning: a linear classifier trained on labelled digits "
                             "classifies held-out digits far above chance (0.1)",
                             claims.ge("test accuracy", softmax_acc, target_acc)),
                claims.claim("basics.oracle", "Our softmax regression agrees with scikit-learn's LogisticRegression "
                             "(an independent implementation)",
                             claims.le("accuracy gap", abs(softmax_acc - sklearn_acc), agree))],
        plots=[image_grid(ctx, weights, [f"class {c}" for c in range(N_CLASSES)], "softmax_weights.png",
                          "Softmax regression's weights, one template per class (red: evidence for the class, "
                          "blue: against). A linear classifier scores a digit by its overlap with each template.",
                          cmap="RdBu_r", scale="symmetric"),
               ctx.savefig(fig, "softmax_training.png", "Softmax regression training: cross-entropy on the "
                           "training and test digits, and test accuracy, per epoch (dashed: scikit-learn's "
                           "LogisticRegression on the same split).")],
        text=[f"Softmax regression, a linear classifier, reaches {softmax_acc:.1%} test accuracy (scikit-learn's "
              f"LogisticRegression on the same split: {sklearn_acc:.1%}); its weights are one template per digit."])


# ---------------------------------------------------------------------------- 3. k-means
def k_means(ctx: Context, state: dict[str, Any]) -> Finding:
    """Ten clusters found without labels, compared with the labels afterwards."""
    d = _digits(ctx, state)
    x, labels = d["x"], d["labels"]
    n_init = ctx.budget("k-means restarts", full=10, quick=5, tiny=1)
    centroids, assign, inertia = kmeans(x, N_CLASSES, ctx.rng(2), n_init=n_init)
    purity = cluster_purity(assign, labels)
    chance = float(np.bincount(labels).max() / len(labels))
    purity_target = ctx.threshold("k-means purity", full=0.6)
    from sklearn.cluster import KMeans

    sk_inertia = float(KMeans(N_CLASSES, n_init=n_init, random_state=ctx.seed).fit(x).inertia_)
    majority = [int(np.bincount(labels[assign == j], minlength=N_CLASSES).argmax()) if (assign == j).any() else -1
                for j in range(N_CLASSES)]
    shares = [float((labels[assign == j] == majority[j]).mean()) if (assign == j).any() else 0.0
              for j in range(N_CLASSES)]
    side = d["images"].shape[1]
    return Finding(
        title="k-means: clusters without labels",
        metrics={"kmeans": {"k": N_CLASSES, "purity": purity, "chance_purity": chance, "inertia": inertia,
                            "sklearn_inertia": sk_inertia, "restarts": n_init}},
        claims=[claims.claim("basics.kmeans", "Unsupervised learning: k-means clusters of digits agree with the true "
                             "digit far above chance (purity; chance is about 0.1)",
                             claims.ge("purity", purity, purity_target))],
        plots=[image_grid(ctx, centroids.reshape(N_CLASSES, side, side),
                          [f"{m}: {s:.0%}" for m, s in zip(majority, shares)], "kmeans_centroids.png",
                          "The k-means centroids as images. k-means never saw a label; the title over each centroid "
                          "gives its cluster's most common true digit and that digit's share, computed afterwards.")],
        text=[f"Without labels, k-means groups the digits into {N_CLASSES} clusters whose purity is {purity:.1%} "
              f"(chance {chance:.1%})."])


# ---------------------------------------------------------------------------- 4. PCA
def principal_components(ctx: Context, state: dict[str, Any]) -> Finding:
    """The two directions of largest variance; a nearest-neighbour vote in that plane."""
    d = _digits(ctx, state)
    x, labels, train, test = d["x"], d["labels"], d["train"], d["test"]
    projected, _, ratio = pca(x, 2)
    from sklearn.decomposition import PCA

    sk_ratio = PCA(2).fit(x).explained_variance_ratio_
    knn_target = ctx.threshold("5-NN accuracy in the 2-D PCA plane", full=0.4)
    votes = _knn_votes(projected[train], labels[train], projected[test])
    knn = float((votes == labels[test]).mean())
    per_digit = {int(c): float((votes[labels[test] == c] == c).mean()) for c in np.unique(labels[test])}
    best = sorted(per_digit, key=per_digit.get, reverse=True)[:4]
    fig = ctx.figure(7, 6)
    ax = fig.subplots()
    scatter = ax.scatter(projected[:, 0], projected[:, 1], c=labels, cmap="tab10", s=8, alpha=0.8)
    for c in range(N_CLASSES):
        if (labels == c).any():
            cx, cy = np.median(projected[labels == c], 0)
            ax.text(cx, cy, str(c), fontsize=15, weight="bold", ha="center", va="center",
                    bbox=dict(boxstyle="circle,pad=0.2", fc="white", alpha=0.7))
    ax.set(xlabel=f"PC 1 ({ratio[0]:.1%} of variance)", ylabel=f"PC 2 ({ratio[1]:.1%} of variance)",
           title="digits projected on two principal components")
    fig.colorbar(scatter, ax=ax, ticks=range(N_CLASSES), label="true digit (used only for colour)")
    best_text = ", ".join(f"{c} ({per_digit[c]:.0%})" for c in best)
    return Finding(
        title="PCA: two directions of largest variance",
        metrics={"pca": {"explained_variance_ratio": ratio.tolist(), "explained_variance_2d": float(ratio.sum()),
                         "sklearn_explained_variance_ratio": sk_ratio.tolist(), "knn5_accuracy_2d": knn,
                         "knn5_accuracy_2d_per_digit": {str(c): v for c, v in per_digit.items()},
                         "best_separated_digits": best}},
        claims=[claims.claim("basics.pca", "Two principal components, found without labels, already separate several "
                             "digits (a 5-nearest-neighbour vote in the 2-D plane, chance 0.1)",
                             claims.ge("5-NN accuracy in 2-D", knn, knn_target))],
        plots=[ctx.savefig(fig, "pca_scatter.png", "Every digit projected on the two directions of largest "
                           "variance. PCA used no labels; the colours show the true digits. The digits a "
                           f"nearest-neighbour vote in this plane gets right most often: {best_text}.")],
        text=[f"PCA's first two components ({ratio.sum():.1%} of the variance) already separate several digits: a "
              f"nearest-neighbour vote in that plane is right {knn:.1%} of the time, most often for {best_text}."])


def _knn_votes(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, k: int = 5) -> np.ndarray:
    """The majority label of each test point's k nearest training points."""
    d2 = ((test_x[:, None, :] - train_x[None]) ** 2).sum(-1)               # (N_test, N_train)
    nearest = np.argsort(d2, axis=1)[:, :k]                                 # (N_test, k)
    return np.array([np.bincount(train_y[row], minlength=N_CLASSES).argmax() for row in nearest])

# Report guide: static text, not part of the run's record (the provenance check reads only the record).
HOW = (
    "Linear regression predicts a number as a weighted sum of the inputs and fits the weights by least "
    "squares, here by gradient descent on the mean squared error:",
    '<div class="math">ŷ = X w + b        L(w, b) = (1/N) Σᵢ (ŷᵢ − yᵢ)² + λ‖w‖²\n'
    'w ← w − η ∂L/∂w,   ∂L/∂w = (2/N) Xᵀ(ŷ − y) + 2λw</div>',
    "Softmax regression turns one score per class into probabilities and is trained by minimising the "
    "cross-entropy, whose gradient with respect to the scores is simply prediction minus target:",
    '<div class="math">z = W x + b,   p_k = exp(z_k) / Σ_j exp(z_j),   L = −log p_y,   ∂L/∂z = p − onehot(y)</div>',
    "k-means needs no labels: it alternates assigning each point to its nearest centroid and moving each "
    "centroid to the mean of its points, which never increases the within-cluster sum of squares. PCA "
    "projects the centred data onto the directions of largest variance, the top right-singular vectors:",
    '<div class="math">k-means:  cᵢ = argmin_k ‖xᵢ − μ_k‖²,   μ_k = mean{xᵢ : cᵢ = k},   J = Σᵢ ‖xᵢ − μ_cᵢ‖²\n'
    'PCA:  X − x̄ = U S Vᵀ,   projections = (X − x̄) V[:, :k],   explained variance ∝ S²</div>',
)
TRY_NEXT = (
    ("groundup run basics --set lr=0.1 --out runs/try",
     "a larger step for softmax regression: the loss falls faster at first, then may bounce; compare the "
     "test accuracy with this run."),
    ("groundup run basics --set epochs=5 --out runs/try",
     "far fewer passes over the data: the softmax model stops short of the scikit-learn oracle."),
)


STAGE = Stage("basics", "supervised vs unsupervised learning on 8x8 digits: regression, softmax, k-means, PCA",
              experiments=(linear_regression, softmax_regression, k_means, principal_components),
              headline=("softmax test accuracy", "softmax_regression.final_test_accuracy"),
              title="Machine-learning basics: linear and softmax regression, k-means and PCA on digits",
              better="higher",
              anchor=("scikit-learn's LogisticRegression",
                      "softmax_regression.sklearn_logistic_regression_test_accuracy"),
              how=HOW, try_next=TRY_NEXT,
              options=(('epochs', 'softmax regression epochs', int), ('lr', 'softmax regression learning rate', float)))
