"""The roadmap's stages, in order. Adding a stage = one file in this folder + one line in ``STAGE_ORDER``.

How to write a stage
====================
A stage is a module ``groundup/roadmap/stages/NAME.py`` that defines ``STAGE``:

    from groundup.roadmap import Context, Stage, StageResult, claims

    def run(ctx: Context) -> StageResult:
        epochs = ctx.budget("epochs", full=30, quick=10, tiny=1)    # recorded; the report lists quick vs full
        target = ctx.threshold("test accuracy", full=0.97, quick=0.95)
        for epoch in ctx.track(range(epochs), "training"):         # a progress bar (quiet without a TTY)
            ...
            ctx.info(f"loss {loss:.3f}")                          # status beside the bar
        fig = ctx.figure(6, 4)                                     # a matplotlib Figure (Agg, no pyplot)
        fig.subplots().plot(losses)
        plot = ctx.savefig(fig, "loss.png", "Training loss per epoch.")
        return StageResult(
            headline=("test accuracy", acc),                       # shown by `groundup roadmap` and the index
            summary=["One or two plain sentences per paragraph: what the stage shows and how."],
            metrics={"test_accuracy": acc, "loss_curve": losses},  # every number measured (JSON-able)
            claims=[claims.at_least("name.acc", "The net classifies held-out digits", "test accuracy",
                                    acc, target)],
            plots=[plot],
            sections=[("Derivation", "<pre>...</pre>")],          # optional extra HTML (escape data in it)
        )

    STAGE = Stage("name", "one-line summary", run=run, title="Longer report heading")

The contract:

- ``run(ctx)`` gets a ``Context`` (``groundup.roadmap.runner``): ``ctx.quick`` / ``ctx.tiny`` /
  ``ctx.mode``, ``ctx.device`` ("cpu" | "cuda"), ``ctx.seed`` (Python, NumPy and groundup are
  already seeded with it; ``ctx.rng(k)`` gives independent NumPy streams), ``ctx.out_dir`` (the
  stage's run directory, already created), ``ctx.options`` (extra CLI options, e.g.
  ``{"dataset": "mnist"}``; ignore what you don't use), the budget helpers ``ctx.pick``,
  ``ctx.budget``, ``ctx.threshold``, and output helpers ``ctx.track``, ``ctx.info``, ``ctx.log``,
  ``ctx.figure``, ``ctx.savefig``, ``ctx.to_tensor``.
- It returns a ``StageResult``; the runner writes ``metrics.json``, ``report.html`` and the index,
  and prints the claims. Never print PASS/FAIL yourself, never call ``sys.exit``.
- Budgets: ``--quick`` runs should take about a minute on two CPU cores (the whole
  ``groundup run all --quick`` must fit in 10 minutes); ``tiny`` (tests) a few seconds. A quick
  run may loosen a threshold through ``ctx.threshold(name, full, quick)``, which puts it in the
  report's quick-mode banner. Tiny runs may fail their claims; tests only check the files.
- Raise ``StageError("what is wrong and what to do")`` when the stage cannot run as asked (a
  dataset that cannot be downloaded, ``--device cuda`` without CuPy); any other exception is
  caught, printed with its traceback and recorded as status "error".
- Train with groundup's engine and ``groundup.optim``, seed everything through ``ctx``, and keep
  the stage a readable top-to-bottom story: models belong in ``groundup/models``.

``load_stages()`` imports the modules named in ``STAGE_ORDER`` that exist and skips the others,
so the order can name stages that are still being written.
"""

from __future__ import annotations

import importlib

from groundup.roadmap.runner import Stage

__all__ = ["STAGE_ORDER", "load_stages", "get_stage"]

# The roadmap, in order. A name whose module does not exist yet is skipped.
STAGE_ORDER: tuple[str, ...] = (
    "basics",
    "mlp",
    "cnn",
    "rnn",
    "attention",
    "transformer",
    "scaling",
    "pretrain_finetune",
    "in_context",
    "interpret",
)


def load_stages() -> list[Stage]:
    """The stages whose modules exist, in roadmap order."""
    stages = []
    for name in STAGE_ORDER:
        module_name = f"{__name__}.{name}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name == module_name:  # not written yet; an import error inside the stage still raises
                continue
            raise
        stage = getattr(module, "STAGE", None)
        if not isinstance(stage, Stage):
            raise TypeError(f"{module_name} must define STAGE = Stage(...), found {type(stage).__name__}")
        expected = name.replace("_", "-")  # the module in_context holds the stage "in-context"
        if stage.name != expected:
            raise ValueError(f"{module_name}: STAGE.name is {stage.name!r}, expected {expected!r} "
                             f"(the module name with '_' as '-')")
        stages.append(stage)
    return stages


def get_stage(name: str) -> Stage:
    """The stage called ``name``; a KeyError lists the available ones."""
    stages = {s.name: s for s in load_stages()}
    if name not in stages:
        raise KeyError(f"no stage {name!r}; available: {', '.join(stages) or 'none'}")
    return stages[name]
