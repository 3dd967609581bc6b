"""The error family: every error class freezetune defines is a user's mistake or a fault while
running, and the one-line form of an exception that error messages quote."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import freezetune
from freezetune.utils import RunFault, TrainingFailed, UserError, exception_line, first_line


def freezetune_errors() -> dict[str, type[BaseException]]:
    """Every exception class defined in a freezetune module, by its dotted name."""
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(freezetune.__path__, "freezetune."):
        if info.name.endswith("__main__"):  # importing it runs the command
            continue
        try:
            module = importlib.import_module(info.name)
        except ImportError:  # an optional extra's module (Lightning's worker side)
            continue
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, BaseException) and value.__module__ == info.name:
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return found


def test_every_error_freezetune_defines_is_a_user_error_or_a_fault() -> None:
    errors = freezetune_errors()
    outside = sorted(name for name, cls in errors.items() if not issubclass(cls, (UserError, RunFault)))
    assert outside == []
    users = {name.rsplit(".", 1)[-1] for name, cls in errors.items() if issubclass(cls, UserError)}
    faults = {name.rsplit(".", 1)[-1] for name, cls in errors.items() if issubclass(cls, RunFault)}
    assert {"ConfigError", "FreezeError", "RunExistsError", "BaseMismatch"} <= users
    assert {"Diverged", "CacheRefused", "ExportFailed", "ExportMismatch", "TrainingFailed"} <= faults
    assert not users & faults


def test_the_family_keeps_each_errors_builtin_base() -> None:
    from freezetune.config import ConfigError
    from freezetune.record import RunExistsError
    from freezetune.train import Diverged

    assert issubclass(ConfigError, ValueError) and ConfigError(["a", "b"]).problems == ["a", "b"]
    assert issubclass(RunExistsError, FileExistsError)
    assert issubclass(Diverged, RuntimeError) and issubclass(TrainingFailed, RuntimeError)


def test_first_line_is_the_first_non_blank_line_stripped() -> None:
    assert first_line(ValueError("\n  \n  shape mismatch  \nsecond line")) == "shape mismatch"
    assert first_line(ValueError()) == ""
    assert first_line(RuntimeError("   ")) == ""


def test_exception_line_gives_type_first_line_and_where_it_was_raised() -> None:
    with pytest.raises(KeyError) as raised:
        {}["missing"]
    line = exception_line(raised.value)
    assert line.startswith("KeyError: 'missing' (test_errors.py:")
    assert exception_line(RuntimeError("a\nb")) == "RuntimeError: a"  # never raised: no place
    assert exception_line(ValueError()) == "ValueError"
    assert exception_line(ValueError("x" * 300)) == "ValueError: " + "x" * 160
