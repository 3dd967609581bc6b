"""What train.run returns: finished with its summary, or interrupted with where to resume."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from freezetune.train import Finished, Interrupted, finished


def test_finished_hands_over_the_summary_and_an_interrupted_run_stops_its_caller() -> None:
    summary = SimpleNamespace(epochs=2)  # finished() only hands it over
    assert finished(Finished(summary)) is summary  # type: ignore[arg-type]
    stopped = Interrupted("probe", 2, 3, Path("runs/probe"))
    with pytest.raises(KeyboardInterrupt, match="probe: stopped in epoch 2; resume from runs/probe"):
        finished(stopped)
