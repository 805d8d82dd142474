"""Image classification for the mlp and cnn stages: the data, k-fold splits, training and evaluation.

    data = load_image_data(ctx)                              # digits (bundled) or MNIST (--dataset mnist)
    for train, test in kfold(len(data["x"]), 5, ctx.seed):
        history = fit_classifier(ctx, model, x[train], y[train], x[test], y[test], epochs=30, lr=3e-3)

``fit_classifier`` trains with the Trainer (``groundup.roadmap.training``): Adam, cosine decay to
lr/100, shuffled mini-batches, the test set evaluated after every epoch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import groundup as gu
from groundup import optim
from groundup.models.mlp import MLPConfig
from groundup.nn import Module
from groundup.roadmap.runner import Context, StageError
from groundup.roadmap.training import EpochBatches, classification_loss, evals, train
from groundup.train.evaluation import evaluating

__all__ = ["load_digits_arrays", "load_image_data", "kfold", "predict_logits", "mean_cross_entropy",
           "fit_classifier", "confusion_matrix", "mlp_config_for", "MLP_RECIPE", "LINEAR_RECIPE", "accuracy"]

# The MLP and how it is trained; the cnn stage compares against exactly this.
MLP_RECIPE = {"hidden_sizes": (256,), "lr": 3e-3, "batch_size": 64}
LINEAR_RECIPE = {"lr": 1e-2, "batch_size": 64}


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Digits as X float32 (N, 8, 8) in [0, 1] and y int64 (N,) (scikit-learn's bundled 8x8 digits)."""
    from groundup.data import load_digits

    return load_digits()


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
    """Logits (N, C) as NumPy, in eval mode without building a graph (the model's mode is restored)."""
    with evaluating(model):
        return np.concatenate([model(gu.tensor(x[start:start + batch_size], device=device)).numpy()
                               for start in range(0, len(x), batch_size)])


def accuracy(model: Module, x: np.ndarray, y: np.ndarray, device: str = "cpu") -> float:
    """The fraction of ``x`` whose largest logit is the label ``y``."""
    return float((predict_logits(model, x, device).argmax(1) == y).mean())


def mean_cross_entropy(logits: np.ndarray, y: np.ndarray) -> float:
    """Mean cross-entropy of logits (N, C) against labels (N,), in NumPy."""
    shifted = logits - logits.max(1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    return float(-log_probs[np.arange(len(y)), y].mean())


def fit_classifier(ctx: Context, model: Module, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                   y_test: np.ndarray, *, epochs: int, lr: float, batch_size: int = 64, description: str = "training",
                   weight_decay: float = 0.0, rng: np.random.Generator | None = None,
                   seed_offset: int = 0) -> dict[str, list[float]]:
    """Train with Adam and a cosine learning-rate decay (to lr/100) on shuffled mini-batches.

    Returns:
        per-epoch history: train_loss (mean over the epoch's batches), test_loss, test_accuracy.
    """
    model.to(ctx.device)
    batches = EpochBatches((x_train, y_train), batch_size, rng if rng is not None else ctx.rng(7))
    epoch_losses: list[float] = []

    def evaluate(trainer: Any) -> dict[str, float]:
        if trainer.iter == 0:
            return {}
        logits = predict_logits(model, x_test, ctx.device)
        result = {"train_loss": float(np.mean(epoch_losses)), "test_loss": mean_cross_entropy(logits, y_test),
                  "test_accuracy": float((logits.argmax(1) == y_test).mean())}
        epoch_losses.clear()
        return result

    trainer = train(ctx, model, batches, steps=epochs * batches.steps_per_epoch, lr=lr, min_lr=lr / 100,
                    description=description, loss_fn=classification_loss, evaluate=evaluate,
                    eval_every=batches.steps_per_epoch, seed_offset=seed_offset,
                    optimizer=optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay),
                    callbacks=[lambda t, event, info: epoch_losses.append(info["loss"]) if event == "step" else None],
                    status=lambda info: f"loss {info['train_loss']:.3f}  test acc {info['test_accuracy']:.3f}")
    return evals(trainer, "train_loss", "test_loss", "test_accuracy")


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int = 10) -> np.ndarray:
    """(n_classes, n_classes) counts: row = true class, column = predicted class."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def mlp_config_for(x: np.ndarray, hidden_sizes: tuple[int, ...] = MLP_RECIPE["hidden_sizes"]) -> MLPConfig:
    """The MLP config for images x (N, H, W)."""
    return MLPConfig(in_features=int(np.prod(x.shape[1:])), hidden_sizes=hidden_sizes, num_classes=10)
