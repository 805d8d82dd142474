"""The roadmap's stages, in order. Adding a stage = one file in this folder + one line in ``STAGE_ORDER``.

How to write a stage
====================
A stage is a module ``groundup/roadmap/stages/NAME.py`` that defines ``STAGE``: a short list of
experiments, each a function ``(ctx, state) -> Finding`` (``groundup/roadmap/experiment.py``).

    from groundup.roadmap import Context, Finding, Stage, claims

    def digits(ctx: Context, state: dict) -> Finding:
        epochs = ctx.budget("epochs", full=30, quick=10, tiny=1)    # recorded; the report lists quick vs full
        target = ctx.threshold("test accuracy", full=0.97, quick=0.95)
        ...                                                        # train with groundup.train.Trainer
        fig = ctx.figure(6, 4)                                     # a matplotlib Figure (Agg, no pyplot)
        fig.subplots().plot(losses)
        return Finding(
            title="An MLP on digits",
            metrics={"classification": {"test_accuracy": acc, "loss_curve": losses}},   # JSON-able
            claims=[claims.claim("name.acc", "The net classifies held-out digits",
                                 claims.ge("test accuracy", acc, target))],
            plots=[ctx.savefig(fig, "loss.png", "Training loss per epoch.")],
            text=[f"The MLP reaches {acc:.1%} test accuracy."],    # numbers only from this run's metrics
            sections=[("Derivation", "<pre>...</pre>")])          # optional extra HTML (escape data in it)

    STAGE = Stage("name", "one-line summary", experiments=(digits,),
                  headline=("test accuracy", "classification.test_accuracy"),   # a dotted metric path
                  intro=("What the stage is about, in words (no numbers).",), title="Longer report heading")

A stage may instead define ``run(ctx) -> StageResult`` and pass ``Stage(name, summary, run=run)``.

The contract:

- ``run(ctx)`` gets a ``Context`` (``groundup.roadmap.runner``): ``ctx.quick`` / ``ctx.tiny`` /
  ``ctx.mode``, ``ctx.device`` ("cpu" | "cuda"), ``ctx.seed`` (Python, NumPy and groundup are
  already seeded with it; ``ctx.rng(k)`` gives independent NumPy streams), ``ctx.out_dir`` (the
  stage's run directory, already created), ``ctx.options`` (extra CLI options, e.g.
  ``{"dataset": "mnist"}``; ignore what you don't use), the budget helpers ``ctx.pick``,
  ``ctx.budget``, ``ctx.threshold``, and output helpers ``ctx.track``, ``ctx.info``, ``ctx.log``,
  ``ctx.figure``, ``ctx.savefig``, ``ctx.to_tensor``.
- Experiments return ``Finding``s (a ``run`` function returns a ``StageResult``); the runner writes
  ``metrics.json``, ``report.html`` and the index, and prints the claims. Never print PASS/FAIL
  yourself, never call ``sys.exit``. Every number in a finding's text or a caption must be one of
  this run's metrics, settings or claim values (``groundup.roadmap.provenance``; a test checks it).
- No stage imports another stage (``from groundup.roadmap.stages.x import ...``): shared helpers live
  in roadmap modules (``groundup/roadmap/classify.py``, ``plots.py``) or lower in the library.
- Train with ``groundup.train.Trainer`` (``groundup/roadmap/training.py`` has the roadmap's
  callbacks); keep a hand-written loop only where the loop is the lesson.
- Budgets: ``--quick`` runs should take about a minute on two CPU cores (the whole
  ``groundup run all --quick`` must fit in 10 minutes); ``tiny`` (tests) a few seconds. A quick
  run may loosen a threshold through ``ctx.threshold(name, full, quick)``, which puts it in the
  report's quick-mode banner. Tiny runs (``--tiny``, ten seconds at most) are smoke tests: status
  "smoke", claims shown but not judged; keep their figures cheap (``ctx.tiny``: fewer panels).
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
