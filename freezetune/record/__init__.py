"""The run record: the run folder and its atomic writes, checkpoints (full, delta,
training state), the fingerprints that prove frozen tensors unchanged, and the
formats of ``metrics.jsonl`` and ``summary.json``."""

from freezetune.record.checkpoint import (
    BaseMismatch,
    base_hash,
    delta_keys,
    get_rng_state,
    is_delta,
    load_payload,
    model_payload,
    read_checkpoint,
    serialized_bytes,
    set_rng_state,
)
from freezetune.record.integrity import (
    FrozenCheck,
    FrozenLedger,
    fingerprint,
    fixed_tensors,
    protected_tensors,
    tensor_bytes,
    tensor_digest,
    verify_frozen,
)
from freezetune.record.rundir import (
    FAILED,
    OWN_FILES,
    RECORD_FILES,
    RunDir,
    RunExistsError,
    atomic_write_bytes,
    staging_for,
)
from freezetune.record.summary import EpochResult, RunFacts, build_summary, epoch_row

__all__ = [
    "FAILED",
    "OWN_FILES",
    "RECORD_FILES",
    "BaseMismatch",
    "EpochResult",
    "FrozenCheck",
    "FrozenLedger",
    "RunDir",
    "RunExistsError",
    "RunFacts",
    "atomic_write_bytes",
    "base_hash",
    "build_summary",
    "delta_keys",
    "epoch_row",
    "fingerprint",
    "fixed_tensors",
    "get_rng_state",
    "is_delta",
    "load_payload",
    "model_payload",
    "protected_tensors",
    "read_checkpoint",
    "serialized_bytes",
    "set_rng_state",
    "staging_for",
    "tensor_bytes",
    "tensor_digest",
    "verify_frozen",
]
