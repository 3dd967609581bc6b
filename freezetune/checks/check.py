"""One check of a config against everything it names, and the resolved config a run uses.

freezetune.config checks a config on its own (keys, types, bounds, syntax); whether its
``model.arch`` and ``model.weights`` exist is freezetune.models' knowledge, whether its data
folders and class names do freezetune.data's. :func:`load` and :func:`check` ask all three and
report every problem in one :class:`~freezetune.config.ConfigError`, then resolve the
preprocessing once: the :class:`~freezetune.config.Resolved` that the commands pass down."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from freezetune.config import (
    CONFIG,
    Config,
    ConfigError,
    Resolved,
    convert,
    mark_edited,
    read_config,
    resolve_data,
    semantic_problems,
)
from freezetune.config.preprocess import KEYS
from freezetune.data import data_problems
from freezetune.models import model_problems, weights_preprocessing

__all__ = ["as_resolved", "check", "check_dict", "load", "resolve"]


def load(path: str | Path, overrides: list[str] | None = None) -> Resolved:
    """Load a config file with its ``key=value`` edits, check it (:func:`check`) and resolve it.

    Raises:
        ConfigError: every problem of the config, its model and its data, each line marked
            ``(set on the command line)`` where an edit set the key; ``source`` is the file.
    """
    cfg, problems = read_config(path, overrides)
    return check(cfg, source=str(path), overrides=overrides, found=problems)


def check_dict(tree: dict[str, Any], source: str | None = None) -> Resolved:
    """:func:`load` for a mapping already merged (what :func:`freezetune.config.from_dict` takes)."""
    cfg, problems = convert(tree)
    return check(cfg, source=source, found=problems)


def check(
    cfg: Config,
    source: str | None = None,
    overrides: Sequence[str] | None = None,
    found: list[str] | None = None,
) -> Resolved:
    """Check ``cfg``, its model and its data together; return it resolved (:func:`resolve`).

    Args:
        source: the config file, named in the error.
        overrides: the ``key=value`` edits that made ``cfg``: problems with those keys say so.
        found: the config's own problems, already found while loading it (then not checked
            again); None checks ``cfg`` itself (:func:`freezetune.config.semantic_problems`).

    Raises:
        ConfigError: all the problems, one line each.
    """
    problems = list(found) if found is not None else semantic_problems(cfg)
    problems.extend(mark_edited(_model_and_data_problems(cfg), list(overrides or [])))
    if problems:
        raise ConfigError(problems, source)
    return resolve(cfg)


def _model_and_data_problems(cfg: Config) -> list[str]:
    try:
        # Also after the config's own problems, so that one error lists everything; a key
        # that failed its type check holds None or its default here.
        return model_problems(cfg) + data_problems(cfg)
    except (TypeError, AttributeError):
        return []  # a value too broken to check further is already reported


def resolve(cfg: Config) -> Resolved:
    """``cfg`` with every preprocessing key set, and where each value came from (the config,
    the weights, or the dataset's default). A resolved config resolves to itself."""
    if all(getattr(cfg.data, k) is not None for k in KEYS):
        return Resolved(cfg, dict.fromkeys(KEYS, CONFIG))
    base, source = weights_preprocessing(cfg.model)
    data, sources = resolve_data(cfg.data, base, source)
    return Resolved(dataclasses.replace(cfg, data=data), sources)


def as_resolved(cfg: Config | Resolved) -> Resolved:
    """``cfg`` itself when it is already :class:`Resolved` (what the commands pass down), else
    :func:`resolve` of it (a library caller's plain config)."""
    return cfg if isinstance(cfg, Resolved) else resolve(cfg)
