"""``freezetune plan``'s feature-cache prediction for one config, in a fresh process, as JSON:

  python -m freezetune.bench.plan_worker CONFIG OUT.json [key=value ...]

``freezetune benchmark --models`` compares it with the builds its runs measure. It is what
``freezetune plan`` prints as "built in about X s after about Y s of set-up": the config
checked and its model prepared as ``plan`` does (weights loaded, ``train.threads`` set), then
:func:`freezetune.train.preview_cache`, which asks the :class:`~freezetune.train.CachePolicy`
that training follows. A process of its own, so that the prediction is timed as a user's
``freezetune plan`` is, not in a process warmed by the benchmark's earlier work."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from freezetune import checks
from freezetune.data import build_loaders
from freezetune.train import prepare_model, preview_cache
from freezetune.utils import UserError

__all__ = ["main", "predict_build"]


def predict_build(config: str, overrides: list[str]) -> dict[str, Any]:
    """The cache decision ``freezetune plan`` previews for the config's first phase: its action,
    the predicted build and set-up seconds, the frontier, and the threads it was timed on."""
    checked = checks.load(config, overrides)
    cfg = checked.cfg
    p = prepare_model(checked)
    # As plan.py counts the images: the same loaders, without decoding every image first.
    loaders = build_loaders(cfg.data, cfg.seed, p.num_classes, check_images=False)
    counts = len(loaders.train.dataset), len(loaders.val.dataset)  # type: ignore[arg-type]
    _, d = preview_cache(cfg, p.model, p.schedule, p.device, counts, loaders.val.dataset)[0]
    return {
        "action": d.action.value,
        "predicted_build_s": d.build_s,
        "setup_s": d.setup_s,
        "frontier": d.split.frontier if d.split is not None else None,
        "reason": d.reason,
        "threads": p.threads.torch if p.threads is not None else None,
    }


def main(argv: list[str] | None = None) -> int:
    """Predict for ``CONFIG`` with its edits; write the JSON to ``OUT``. A config the prediction
    refuses prints its one ``error:`` line and exits 2, as ``freezetune plan`` does."""
    config, out, *overrides = argv if argv is not None else sys.argv[1:]
    try:
        prediction = predict_build(config, overrides)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    Path(out).write_text(json.dumps(prediction) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
