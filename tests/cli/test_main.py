"""The console command ``freezetune`` (``python -m freezetune``): dispatch, usage errors,
and commands run from a working directory that is not the repository."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from freezetune.cli.common import guarded
from freezetune.cli.main import COMMANDS, main
from freezetune.utils import RunFault, UserError


def test_usage_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: freezetune COMMAND")
    assert all(f"  {name} " in out for name in COMMANDS)
    assert main([]) == 2  # no command: the usage, and a usage error's status


def test_an_unknown_command_is_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trian"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown command 'trian'; one of train, plan,") and err.count("\n") == 1


def test_each_command_names_itself_in_its_help(capsys: pytest.CaptureFixture[str]) -> None:
    for name in COMMANDS:
        with pytest.raises(SystemExit) as done:
            main([name, "--help"])
        assert done.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: freezetune {name}")


def test_plan_train_and_compare_from_an_unrelated_folder(
    tmp_path: Path, freezetune_cli: Callable[..., Any], tiny_tree: Callable[..., dict]
) -> None:
    # Nothing refers to the repository: the config is here, the runs go here, and
    # compare launches training through the package (python -m freezetune train), in a
    # fresh interpreter started from here: that one is the real console entry; plan and
    # compare themselves run in this process, from this folder.
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny_tree()))
    planned = freezetune_cli(["plan", "--config", "tiny.yaml", "--depth", "1", "--no-estimate"], cwd=tmp_path)
    assert planned.rc == 0, planned.stderr
    assert "parameters: 176,907 total, 195 trainable" in planned.stdout

    compared = freezetune_cli(["compare", "--configs", "tiny.yaml", "--no-estimate", "--out", "report"], cwd=tmp_path)
    assert compared.rc == 0, compared.stderr
    summary = json.loads((tmp_path / "runs" / "tiny" / "summary.json").read_text())
    assert summary["params_trainable"] == 195 and summary["frozen_unchanged"] is True
    # Its own process (compare launches one per run): the start, imports included, is measured.
    assert summary["startup_s"] > 0.3 and summary["startup_from"] == "process start"
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == [
        "curves.png",
        "report.json",
        "report.md",
        "report.png",
        "tradeoff.png",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report", "runs", "tiny.yaml"]


def test_plan_refuses_what_train_would_refuse_and_shows_mixed_modes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tiny_tree: Callable[..., dict]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny_tree()))
    with pytest.raises(SystemExit) as done:
        main(["plan", "--config", "tiny.yaml", "--depth", "0"])
    assert done.value.code == 2 and "--depth 0: 1 is the top level" in capsys.readouterr().err
    assert main(["plan", "--config", "tiny.yaml", "train.cache_features=on", "data.augment=flip_crop"]) == 2
    assert "train.cache_features: 'on', but the frozen prefix cannot be cached" in capsys.readouterr().err
    edits = ["freeze.preset=until:layer3", "freeze.batchnorm=train", "--depth", "1", "--no-probe"]
    assert main(["plan", "--config", "tiny.yaml", *edits]) == 0
    table = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("layer")}
    assert table["layer1"].endswith("mixed (4 of 8 pinned)")  # its 4 convs are pinned, its 4 BatchNorms train
    assert table["layer3"].endswith("train")


def test_a_closed_pipe_ends_quietly(capsys: pytest.CaptureFixture[str]) -> None:
    def body() -> int:
        raise BrokenPipeError(32, "Broken pipe")  # `freezetune tour | head` once head has its lines

    assert guarded(body) == 1
    assert capsys.readouterr().err == ""  # no error line: the reader went away, nothing failed


@pytest.mark.parametrize(("error", "status"), [(UserError, 2), (RunFault, 1)])
def test_guarded_maps_the_error_family_to_its_exit_status(
    error: type[Exception], status: int, capsys: pytest.CaptureFixture[str]
) -> None:
    class Mine(error):  # a subclass the CLI has never heard of: the family decides
        pass

    def body() -> int:
        raise Mine("what went wrong. HINT: the fix")

    assert guarded(body) == status
    assert capsys.readouterr().err == "error: what went wrong. HINT: the fix\n"
