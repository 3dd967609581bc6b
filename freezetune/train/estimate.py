"""A config's predicted cost (step time, memory by kind) before it trains: its model built as
training builds it, profiled on one batch of its shape in its precision and memory format.
``freezetune plan --estimate``, ``freezetune compare`` and the demo ask for it."""

from __future__ import annotations

import torch

from freezetune.config import Config
from freezetune.measure import Estimate, StepFormat, estimate, profile_model
from freezetune.train.optim import make_optimizer
from freezetune.train.setup import Prepared, num_outputs, prepare_model

__all__ = ["estimate_config"]


def estimate_config(
    cfg: Config, reps: int = 7, cache: dict | None = None, prepared: Prepared | None = None
) -> Estimate:
    """The prediction for ``cfg`` on one batch of its shape (weights do not change timing),
    its steps in the run's precision and memory format (``train.precision``, ``train.channels_last``).

    ``cache`` shares the profile between configs of the same architecture, batch shape,
    class count, optimizer, precision and memory format; ``prepared`` reuses a model already built."""
    prepared = prepared or prepare_model(cfg)
    cfg = prepared.cfg  # its preprocessing resolved: the image size the weights want
    size, n, t = cfg.data.image_size, cfg.data.batch_size, cfg.train
    k = num_outputs(cfg)
    x = torch.randn(n, 3, size, size, device=prepared.device)
    key = (cfg.model.arch, size, n, k, t.optimizer.name, str(prepared.device), t.precision, t.channels_last)
    profile = cache.get(key) if cache is not None else None

    def make(model: torch.nn.Module) -> torch.optim.Optimizer:
        return make_optimizer(model, t.optimizer)

    if profile is None:
        profile = profile_model(prepared.model, x, k, make, reps, precision=t.precision, channels_last=t.channels_last)
        if cache is not None:
            cache[key] = profile
    return estimate(prepared.model, x, k, make, reps, profile, StepFormat(t.precision, t.channels_last))
