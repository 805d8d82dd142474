"""The roadmap: runnable stages from a single neuron to a GPT, each with claims, plots and a report.

    groundup roadmap                 list the stages and their last results
    groundup run mlp --quick         run one stage into runs/mlp/
    groundup run all --quick         run every stage in order; runs/index.html links the reports

Python:

    from groundup.roadmap import load_stages, run_stage
    record = run_stage(load_stages()[0], "runs", quick=True)   # the metrics.json record

A stage is a short list of experiments ``(ctx, state) -> Finding``: see
``groundup/roadmap/experiment.py`` (and ``groundup/roadmap/stages/__init__.py``) for how to write one.
"""

from groundup.roadmap import claims
from groundup.roadmap.claims import Check, Claim
from groundup.roadmap.experiment import Finding, run_experiments
from groundup.roadmap.runner import (
    Context,
    Plot,
    Stage,
    StageError,
    StageResult,
    read_metrics,
    run_stage,
    run_stages,
    seed_everything,
)
from groundup.roadmap.stages import STAGE_ORDER, get_stage, load_stages

__all__ = [
    "Check", "Claim", "Context", "Finding", "run_experiments",
    "Plot", "Stage", "StageError", "StageResult", "STAGE_ORDER", "claims", "get_stage",
    "load_stages", "read_metrics", "run_stage", "run_stages", "seed_everything",
]
