"""Developer benchmarks, for the people who work on freezetune: its training step against a
hand-written PyTorch loop, the feature cache's epochs against uncached ones, the cost of
``freeze.preset: auto``'s gradient sample, and its runs against Lightning's on the same work
(each run a fresh process; Lightning only in the worker's Lightning runs, an optional extra),
and its own cost on five ImageNet models trained as a user trains them (cache on, off, auto).
Nothing below ``cli`` imports it, so training never loads it."""

from freezetune.bench.benchmark import (
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
    memory_format_name,
)
from freezetune.bench.features import bn_state, head_input_norms
from freezetune.bench.model_goals import Goal, model_goals, models_tables
from freezetune.bench.models import (
    MODELS,
    ModelRun,
    ModelsReport,
    ModelsSettings,
    PlanPrediction,
    benchmark_models,
    last_stage,
    weights_file,
)
from freezetune.bench.peer import (
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

__all__ = [
    "FIRST_LOSS_TOLERANCE",
    "MODELS",
    "PAIRS",
    "PEERS",
    "BenchPair",
    "BenchResult",
    "CacheBenchResult",
    "Goal",
    "ModelRun",
    "ModelsReport",
    "ModelsSettings",
    "Pair",
    "PeerReport",
    "PlanPrediction",
    "Side",
    "SignalCost",
    "bench_pair",
    "benchmark_auto_signal",
    "benchmark_cache",
    "benchmark_config",
    "benchmark_configs",
    "benchmark_models",
    "benchmark_peer",
    "bn_state",
    "hand_written_loop",
    "head_input_norms",
    "last_stage",
    "memory_format_name",
    "model_goals",
    "models_tables",
    "peer_tables",
    "require_peer",
    "run_worker",
    "weights_file",
]
