"""Applications built on the library: comparing configs (each trained in its own
process, with predicted costs), benchmarking freezetune's step against a
hand-written loop and its runs against Lightning's on the same work (Lightning only
in the worker's Lightning runs: an optional extra), and the Fashion-MNIST transfer demo."""

from freezetune.apps.benchmark import (
    BenchPair,
    BenchResult,
    CacheBenchResult,
    SignalCost,
    bench_pair,
    benchmark_auto_signal,
    benchmark_cache,
    benchmark_config,
    benchmark_configs,
    hand_written_loop,
)
from freezetune.apps.compare import SeedRun, estimate_config, run_action, seed_runs, train_in_subprocess
from freezetune.apps.demo import demo_report, pretrain_is_current, results_table, run_demo
from freezetune.apps.peer import (
    FIRST_LOSS_TOLERANCE,
    PAIRS,
    PEERS,
    Pair,
    PeerReport,
    Side,
    benchmark_peer,
    peer_tables,
    require_peer,
    run_worker,
)
from freezetune.apps.shipped import shipped_config, shipped_configs_dir

__all__ = [
    "FIRST_LOSS_TOLERANCE",
    "PAIRS",
    "PEERS",
    "BenchPair",
    "BenchResult",
    "CacheBenchResult",
    "Pair",
    "PeerReport",
    "SeedRun",
    "Side",
    "SignalCost",
    "bench_pair",
    "benchmark_auto_signal",
    "benchmark_cache",
    "benchmark_config",
    "benchmark_configs",
    "demo_report",
    "benchmark_peer",
    "estimate_config",
    "hand_written_loop",
    "peer_tables",
    "pretrain_is_current",
    "require_peer",
    "results_table",
    "run_action",
    "run_demo",
    "run_worker",
    "seed_runs",
    "shipped_config",
    "shipped_configs_dir",
    "train_in_subprocess",
]
