"""What users run on top of the library: comparing configs (each trained in its own process,
with predicted costs), the Fashion-MNIST transfer demo, the guided tour of what freezing
saves, and the shipped configs they start from. The developer benchmarks live in
:mod:`freezetune.bench`, off the path of every other command."""

from freezetune.apps.compare import (
    Comparison,
    ComparisonStopped,
    SeedRun,
    predict_costs,
    run_action,
    run_comparison,
    seed_runs,
    summary_lines,
    train_in_subprocess,
)
from freezetune.apps.demo import demo_report, pretrain_is_current, results_table, run_demo
from freezetune.apps.shipped import shipped_config, shipped_configs_dir

__all__ = [
    "Comparison",
    "ComparisonStopped",
    "SeedRun",
    "demo_report",
    "predict_costs",
    "pretrain_is_current",
    "results_table",
    "run_action",
    "run_comparison",
    "run_demo",
    "seed_runs",
    "shipped_config",
    "shipped_configs_dir",
    "summary_lines",
    "train_in_subprocess",
]
