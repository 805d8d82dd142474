"""Stage ``cnn``: a small convolutional net on digits (or MNIST), against the MLP of stage ``mlp``.

1. Weight sharing: the CNN (``groundup.models.cnn``) reaches a higher test accuracy than the MLP
   with fewer parameters (k-fold cross-validation on digits, as in stage ``mlp``).
2. Local patterns: the learned first-layer 3x3 filters and what they respond to on one digit.
3. Shifts: both nets, trained on the same centred digits, are tested on the same test digits
   shifted by one and two pixels; the CNN loses less accuracy than the MLP.

References: LeCun et al. (1998), "Gradient-based learning applied to document recognition";
cs231n "Convolutional networks": https://cs231n.github.io/convolutional-networks/
"""

from __future__ import annotations

from typing import Any

import numpy as np

from groundup.models.cnn import CNN, CNNConfig
from groundup.models.mlp import MLP
from groundup.nn.conv import Conv2d, MaxPool2d
from groundup.roadmap import Finding, claims
from groundup.roadmap.classify import (
    MLP_RECIPE,
    accuracy,
    confusion_matrix,
    fit_classifier,
    kfold,
    load_image_data,
    mlp_config_for,
    predict_logits,
)
from groundup.roadmap.plots import image_grid, plot_confusion
from groundup.roadmap.runner import Context, Stage
from groundup.train.evaluation import evaluating

__all__ = ["STAGE", "shift_images", "SHIFTS", "CNN_RECIPE", "weight_sharing", "filters", "shifts"]

CNN_RECIPE = {"channels": (16, 32), "lr": 1e-2, "batch_size": 64}
# Every shift by one and by two pixels along each axis: (dx, dy), dx > 0 moves the digit right.
SHIFTS = {1: [(1, 0), (-1, 0), (0, 1), (0, -1)], 2: [(2, 0), (-2, 0), (0, 2), (0, -2)]}


def shift_images(x: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """Translate images (N, H, W) by dx columns and dy rows, filling the uncovered border with 0 (blank)."""
    out = np.zeros_like(x)
    h, w = x.shape[1:]
    out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        x[:, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def _shift_accuracies(model: Any, x: np.ndarray, y: np.ndarray, device: str) -> dict[int, float]:
    """Mean accuracy over the shifts of each size, 0 = unshifted."""
    result = {0: accuracy(model, x, y, device)}
    for size, shifts in SHIFTS.items():
        result[size] = float(np.mean([accuracy(model, shift_images(x, dx, dy), y, device) for dx, dy in shifts]))
    return result


def _train_both(ctx: Context, state: dict[str, Any]) -> None:
    """Train the CNN and the MLP on each fold; keep the accuracies on shifted test digits in ``state``."""
    data = load_image_data(ctx)
    if data["name"] == "mnist":
        epochs = ctx.budget("CNN epochs (MNIST)", full=8, quick=2, tiny=1)
        mlp_epochs = ctx.budget("MLP epochs (MNIST)", full=15, quick=4, tiny=1)
        splits: list[tuple[Any, Any]] = [(None, None)]
    else:
        epochs = ctx.budget("CNN epochs", full=30, quick=20, tiny=2, option="epochs")
        mlp_epochs = ctx.budget("MLP epochs", full=60, quick=30, tiny=2)
        splits = kfold(len(data["x"]), ctx.budget("cross-validation folds", full=5, quick=3, tiny=2), ctx.seed)
    config = CNNConfig(image_size=data["x"].shape[1], channels=CNN_RECIPE["channels"])
    folds, curves, y_true, y_pred = [], {}, [], []
    for fold, (tr, te) in enumerate(splits):
        x_tr, y_tr, x_te, y_te = ((data["x"], data["y"], data["x_test"], data["y_test"]) if tr is None else
                                  (data["x"][tr], data["y"][tr], data["x"][te], data["y"][te]))
        tag = f"fold {fold + 1}/{len(splits)}" if len(splits) > 1 else data["name"]
        cnn = CNN(config)
        h_cnn = fit_classifier(ctx, cnn, x_tr, y_tr, x_te, y_te, epochs=epochs, lr=CNN_RECIPE["lr"],
                               batch_size=CNN_RECIPE["batch_size"], description=f"CNN, {tag}",
                               rng=ctx.rng(10 + fold), seed_offset=10 + fold)
        mlp = MLP(mlp_config_for(x_tr))
        h_mlp = fit_classifier(ctx, mlp, x_tr, y_tr, x_te, y_te, epochs=mlp_epochs, lr=MLP_RECIPE["lr"],
                               batch_size=MLP_RECIPE["batch_size"], description=f"MLP, {tag}",
                               rng=ctx.rng(20 + fold), seed_offset=20 + fold)
        folds.append({"cnn": _shift_accuracies(cnn, x_te, y_te, ctx.device),
                      "mlp": _shift_accuracies(mlp, x_te, y_te, ctx.device), "n_test": len(y_te)})
        y_true.append(y_te)
        y_pred.append(predict_logits(cnn, x_te, ctx.device).argmax(1))
        if fold == 0:
            curves = {"cnn": h_cnn, "mlp": h_mlp}
            state["first_cnn"], state["first_test"] = cnn, x_te
    acc = {m: {s: float(np.mean([f[m][s] for f in folds])) for s in (0, 1, 2)} for m in ("cnn", "mlp")}
    state.update(data=data, splits=splits, folds=folds, curves=curves, acc=acc, config=config,
                 epochs=epochs, mlp_epochs=mlp_epochs, n_params={"cnn": cnn.num_parameters(),
                                                                 "mlp": mlp.num_parameters()},
                 cm=confusion_matrix(np.concatenate(y_true), np.concatenate(y_pred)))


def weight_sharing(ctx: Context, state: dict[str, Any]) -> Finding:
    """A CNN against the MLP of stage mlp: accuracy and parameters."""
    _train_both(ctx, state)
    data, acc, n_params, splits, curves = state["data"], state["acc"], state["n_params"], state["splits"], \
        state["curves"]
    mnist = data["name"] == "mnist"
    target = (ctx.threshold("CNN test accuracy (MNIST)", full=0.99, quick=0.98) if mnist
              else ctx.threshold("CNN test accuracy (digits)", full=0.98, quick=0.975))
    where = "MNIST's test digits" if mnist else "held-out digits (mean over the folds)"
    k = state["config"].kernel_size
    protocol = f"averaged over {len(splits)} cross-validation folds" if len(splits) > 1 else "on MNIST's test set"
    fig = ctx.figure(10, 3.6)
    ax1, ax2 = fig.subplots(1, 2)
    for m, color in (("cnn", "C3"), ("mlp", "C0")):
        e = np.arange(1, len(curves[m]["train_loss"]) + 1)
        ax1.plot(e, curves[m]["train_loss"], "-", color=color, label=f"{m.upper()} train")
        ax1.plot(e, curves[m]["test_loss"], "--", color=color, label=f"{m.upper()} test")
        ax2.plot(e, curves[m]["test_accuracy"], color=color, label=m.upper())
    ax1.set(xlabel="epoch", ylabel="cross-entropy", yscale="log", title="loss")
    ax2.set(xlabel="epoch", ylabel="test accuracy", title="test accuracy")
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    plots = [ctx.savefig(fig, "loss_curves.png", "Training (solid) and test (dashed) loss and test accuracy per "
                         f"epoch, {'first fold' if len(splits) > 1 else data['name']}."),
             plot_confusion(ctx, state["cm"], "confusion.png", "Confusion matrix of the CNN (rows: true digit, "
                            "columns: predicted).", title="CNN confusion matrix")]
    metrics = {"classification": {
        "dataset": data["name"], "protocol": f"{len(splits)}-fold cross-validation" if len(splits) > 1 else
        "train/test split", "cnn_test_accuracy": acc["cnn"][0], "mlp_test_accuracy": acc["mlp"][0],
        "cnn_parameters": n_params["cnn"], "mlp_parameters": n_params["mlp"], "cnn_channels":
        list(CNN_RECIPE["channels"]), "cnn_epochs": state["epochs"], "mlp_epochs": state["mlp_epochs"],
        "confusion_matrix": state["cm"].tolist(), "curves_first_fold": curves, "kernel_size": k,
        "n_folds": len(splits)}}
    return Finding(
        title="Weight sharing: higher accuracy with fewer parameters", metrics=metrics, plots=plots,
        claims=[claims.claim("cnn.accuracy", f"A small CNN classifies {where}",
                             claims.ge("test accuracy", acc["cnn"][0], target)),
                claims.claim("cnn.weight_sharing", "Weight sharing: a CNN reaches higher accuracy than an MLP with "
                             "fewer parameters", claims.gt("CNN accuracy", acc["cnn"][0], "MLP accuracy",
                                                           acc["mlp"][0]),
                             claims.lt("CNN parameters", n_params["cnn"], "MLP parameters", n_params["mlp"]))],
        text=[f"A convolution slides one small filter ({k}x{k} weights) over the whole image, so the same local "
              "pattern detector is reused everywhere (weight sharing); pooling keeps the strongest response in "
              "each neighbourhood and halves the resolution.",
              f"With {n_params['cnn']:,} parameters the CNN reaches {acc['cnn'][0]:.1%} test accuracy, against "
              f"{acc['mlp'][0]:.1%} for the MLP of stage mlp with {n_params['mlp']:,} parameters ({protocol})."])


def filters(ctx: Context, state: dict[str, Any]) -> Finding:
    """The first layer's learned filters, and what they respond to on one digit."""
    cnn, test = state["first_cnn"], state["first_test"]
    k = state["config"].kernel_size
    weights = cnn.first_layer_filters()[:, 0]                               # (C_out, k, k)
    plots = [image_grid(ctx, weights, [f"filter {i}" for i in range(len(weights))], "filters.png",
                        f"The first layer's learned {k}x{k} filters (red: positive weights, blue: negative). A "
                        "bright side next to a dark side responds to an edge at that orientation; a bar of one "
                        "sign to a stroke.", cols=8, cmap="RdBu_r", scale="symmetric")]
    digit = test[:1]                                                        # (1, H, W)
    size = digit.shape[1]
    with evaluating(cnn):
        maps = cnn.features[1](cnn.features[0](
            ctx.to_tensor(digit).reshape(1, 1, size, size))).numpy()[0]    # (C_out, H, W) after ReLU
    plots.append(image_grid(ctx, np.concatenate([digit, maps]), ["input"] + [f"map {i}" for i in range(len(maps))],
                            "feature_maps.png", "What each first-layer filter responds to on one test digit (after "
                            "ReLU; brighter = stronger): the same filter slides over the whole image, so each map "
                            "lights up wherever its local pattern occurs.", cols=9,
                            cmap=["gray_r"] + ["magma"] * len(maps), scale="each"))
    return Finding(title="Local patterns: the learned filters", plots=plots,
                   text=["Convolutions break an image into small pieces and learn local patterns. The first layer's "
                         "filters are drawn below: one with a bright side next to a dark side responds to an edge, "
                         "one with a bar of one sign to a stroke."])


def shifts(ctx: Context, state: dict[str, Any]) -> Finding:
    """Both nets on the same test digits moved by one and two pixels."""
    acc, n_params, folds = state["acc"], state["n_params"], state["folds"]
    drop = {m: float(np.mean([acc[m][0] - acc[m][s] for s in SHIFTS])) for m in acc}
    fig = ctx.figure(6.4, 4)
    ax = fig.subplots()
    for m, color in (("cnn", "C3"), ("mlp", "C0")):
        ax.plot([0, 1, 2], [acc[m][s] for s in (0, 1, 2)], "o-", color=color,
                label=f"{m.upper()} ({n_params[m]:,} parameters)")
    ax.set(xticks=[0, 1, 2], xlabel="shift (pixels)", ylabel="test accuracy", ylim=(0, 1.02),
           title="accuracy on shifted test digits")
    ax.legend()
    shown = [(0, 0)] + SHIFTS[1] + SHIFTS[2]
    examples = np.concatenate([shift_images(state["first_test"][:1], dx, dy) for dx, dy in shown])  # (9, H, W)
    plots = [ctx.savefig(fig, "shift.png", "Test accuracy on the same digits moved by the shift on the x axis, "
                         "in pixels (mean over left, right, up and down). Neither net saw shifted digits in "
                         "training; the CNN's shared local filters and pooling make it lose less."),
             image_grid(ctx, examples, [f"({dx:+d}, {dy:+d})" for dx, dy in shown], "shift_examples.png",
                        "One test digit and its shifted copies (dx, dy); the uncovered border is blank.",
                        cols=len(shown))]
    metrics = {"shift": {"accuracy_by_shift_pixels": {m: {str(s): v for s, v in acc[m].items()} for m in acc},
                         "mean_accuracy_drop": drop, "shifts": {str(k): v for k, v in SHIFTS.items()},
                         "folds": [{m: {str(s): v for s, v in f[m].items()} for m in ("cnn", "mlp")}
                                   for f in folds]}}
    return Finding(
        title="Shifted digits", metrics=metrics, plots=plots,
        claims=[claims.claim("cnn.shift", "Shifted digits hurt a CNN less than an MLP (accuracy lost on the same "
                             "test digits moved by one and two pixels)",
                             claims.gt("MLP accuracy drop", drop["mlp"], "CNN accuracy drop", drop["cnn"]))],
        text=[f"Moving the test digits by one or two pixels lowers the CNN's test accuracy by {drop['cnn']:.3f} on "
              f"average (from {acc['cnn'][0]:.3f} unshifted) and the MLP's by {drop['mlp']:.3f} (from "
              f"{acc['mlp'][0]:.3f}): the MLP has one weight per pixel position, while the CNN's filters find a "
              "stroke wherever it is."])

# Report guide: static text, not part of the run's record (the provenance check reads only the record).
HOW = (
    "A convolution slides one small filter over the whole image: the same weights are used at every "
    "position (weight sharing), so a filter that detects an edge detects it anywhere, and the layer has "
    "far fewer parameters than a dense layer over the same pixels:",
    '<div class="math">y[c_out, i, j] = b[c_out] + Σ_{c_in} Σ_{u,v} W[c_out, c_in, u, v] · x[c_in, i+u, j+v]\n'
    'parameters: C_out·C_in·k·k + C_out   (a dense layer: (C_out·H·W)·(C_in·H·W))</div>',
    "Its gradient is a convolution too: the gradient of a weight sums over every position it was used "
    "at, and the gradient of the input is the output gradient convolved with the flipped filter. "
    "groundup computes the forward pass as one matrix product (im2col: every k×k patch becomes a row). "
    "Max pooling keeps the largest value in each window, which makes the features tolerate small shifts.",
    '<div class="math">∂L/∂W[c_out, c_in, u, v] = Σ_{i,j} δy[c_out, i, j] · x[c_in, i+u, j+v]</div>',
)
TRY_NEXT = (
    ("groundup run cnn --set epochs=3 --out runs/try",
     "a short training: the CNN's accuracy drops, and the learned filters look noisier."),
    ("groundup run cnn --dataset mnist --quick --out runs/try",
     "real 28x28 digits, where weight sharing matters more: the gap in parameters to the MLP grows."),
)


STAGE = Stage("cnn", "small CNN on digits: weight sharing, learned filters, robustness to shifts",
              experiments=(weight_sharing, filters, shifts),
              headline=("CNN test accuracy", "classification.cnn_test_accuracy"),
              title="Convolutional networks: fewer parameters, local filters, shifted digits",
              better="higher", anchor=("the MLP", "classification.mlp_test_accuracy"),
              how=HOW, try_next=TRY_NEXT, code=(Conv2d, MaxPool2d),
              options=(('epochs', 'CNN epochs (digits)', int),))
