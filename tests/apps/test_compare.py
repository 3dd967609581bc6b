"""compare: the runs of each seed, and which finished runs it reuses."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from freezetune.apps import Comparison, predict_costs, run_action, run_comparison, seed_runs, summary_lines
from freezetune.apps import compare as compare_app
from freezetune.checks import resolve
from freezetune.cli import compare as compare_cli
from freezetune.config import ConfigError, load_config, to_dict
from freezetune.record import RunExistsError
from freezetune.train import run

# --------------------------------------------------------------------------- seeds


@pytest.fixture(scope="session")
def write_config(tiny_tree: Callable[..., dict]) -> Callable[..., Path]:
    """``write_config(tmp_path, name, **train)``: conftest's tiny run as ``name.yaml``, training into
    ``runs/name``, with those ``train`` keys."""

    def write(tmp_path: Path, name: str = "tiny", **train: object) -> Path:
        path = tmp_path / f"{name}.yaml"
        edits = {
            "name": name,
            # No feature cache: its build (tracing the model) would cost more than these runs.
            "train.cache_features": "off",
            "train.output_dir": str(tmp_path / "runs" / name),
            **{f"train.{key}": value for key, value in train.items()},
        }
        path.write_text(yaml.safe_dump(tiny_tree(edits)))
        return path

    return write


def test_seed_runs_give_each_seed_its_folder_and_one_seed_the_config_as_it_stands(
    tmp_path: Path, write_config: Callable[..., Path]
) -> None:
    file = str(write_config(tmp_path))
    (single,) = seed_runs(file, [])
    assert single.overrides == [] and single.cfg.output_dir == tmp_path / "runs" / "tiny"
    runs = seed_runs(file, ["seed=5"], seeds=3)
    assert [r.cfg.seed for r in runs] == [5, 6, 7]
    assert [r.cfg.output_dir.name for r in runs] == ["tiny-seed5", "tiny-seed6", "tiny-seed7"]
    assert all(r.cfg.seeds == 1 and r.cfg.name == "tiny" for r in runs)  # each run is one seed of config tiny
    # The config's own seeds: when --seeds is not given.
    assert len(seed_runs(file, ["seeds=2"])) == 2 and len(seed_runs(file, ["seeds=2"], seeds=1)) == 1


def test_finished_seed_runs_are_reused_and_only_the_missing_seed_trains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, write_config: Callable[..., Path]
) -> None:
    file = write_config(tmp_path)
    for r in seed_runs(str(file), [], seeds=2):
        run(r.cfg)
    stamps = {d.name: (d / "summary.json").stat().st_mtime_ns for d in (tmp_path / "runs").iterdir()}
    trained: list[list[str]] = []

    def train_here(config: str, overrides: list[str], overwrite: bool = False, **how: object) -> Path:
        trained.append(overrides)
        cfg = load_config(config, overrides)
        run(cfg)
        return cfg.output_dir

    monkeypatch.setattr(compare_app, "train_in_subprocess", train_here)
    out = tmp_path / "report"
    assert compare_cli.main(["--configs", str(file), "--seeds", "3", "--no-estimate", "--out", str(out)]) == 0
    assert trained == [["seed=2", "seeds=1", f"train.output_dir={tmp_path / 'runs' / 'tiny'}-seed2"]]
    printed = capsys.readouterr().out
    assert "tiny seed 0: reusing" in printed and "tiny seed 1: reusing" in printed
    assert "tiny seed 2: training into" in printed
    assert {d: (tmp_path / "runs" / d / "summary.json").stat().st_mtime_ns for d in stamps} == stamps  # untouched
    assert json.loads((out / "report.json").read_text())["rows"][0]["seeds"] == [0, 1, 2]


def test_a_run_is_not_reused_once_its_weights_file_changed(tmp_path: Path, write_config: Callable[..., Path]) -> None:
    weights = tmp_path / "base.pt"
    torch.save({}, weights)
    file = write_config(tmp_path)
    cfg = load_config(file)
    run(cfg)  # a finished run; its config names no weights file ...
    assert run_action(cfg, overwrite=False) == "reuse"
    with_file = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, weights=str(weights)))
    (cfg.output_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(resolve(with_file)[0])))
    # ... now it does, and the file is older than the run: reused.
    os.utime(weights, (0, 0))
    assert run_action(with_file, overwrite=False) == "reuse"
    os.utime(weights)  # retrained since: newer than the run's summary.json
    with pytest.raises(RunExistsError, match=f"its model.weights {weights} changed after it finished"):
        run_action(with_file, overwrite=False)
    assert run_action(with_file, overwrite=True) == "replace"


def test_compare_refuses_an_unknown_reference_before_training(
    tmp_path: Path, capsys, write_config: Callable[..., Path]
) -> None:
    file = write_config(tmp_path)
    assert compare_cli.main(["--configs", str(file), "--reference", "nope", "--out", str(tmp_path / "r")]) == 2
    assert "--reference nope: no such config here; choose one of tiny" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "r").exists()


def test_seeds_given_always_use_the_seed_folders(tmp_path: Path, write_config: Callable[..., Path]) -> None:
    file = str(write_config(tmp_path))
    (one,) = seed_runs(file, ["seed=4"], seeds=1)
    assert one.cfg.output_dir.name == "tiny-seed4" and one.overrides == ["seed=4", "seeds=1", one.overrides[-1]]


def test_a_changed_config_is_refused_naming_the_key_that_differs(
    tmp_path: Path, write_config: Callable[..., Path]
) -> None:
    file = write_config(tmp_path)
    run(load_config(file))
    with pytest.raises(RunExistsError, match=r"its config differs in train\.epochs: 1 there, 2 now\)\. HINT: pass"):
        run_action(load_config(file, ["train.epochs=2"]), overwrite=False)


def test_compare_finds_a_data_mistake_and_a_bad_out_before_training_anything(
    tmp_path: Path, capsys, write_config: Callable[..., Path]
) -> None:
    good = write_config(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "extends": str(good),
                "name": "bad",
                "data": {"dataset": "imagefolder", "root": str(tmp_path / "none")},
                "train": {"output_dir": str(tmp_path / "runs" / "bad")},
            }
        )
    )
    out = str(tmp_path / "report")
    assert compare_cli.main(["--configs", str(good), str(bad), "--seeds", "2", "--out", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    # Found with the config's own checks (freezetune.checks), so the line names the file too.
    assert len(err) == 1 and err[0].startswith(f"error: {bad}: data.root: imagefolder needs the folders")
    inside = str(tmp_path / "runs" / "tiny-seed1" / "report")
    assert compare_cli.main(["--configs", str(good), "--seeds", "2", "--out", inside]) == 2
    assert f"--out {inside}: inside the run folder {tmp_path / 'runs' / 'tiny-seed1'}" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "report").exists()
    with pytest.raises(SystemExit) as exited:  # argparse exits from parse_args
        compare_cli.main(["--seeds", "0", "runs/x"])
    assert exited.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()  # argparse's mistakes: one line too
    assert line.startswith("error: argument --seeds: '0': give a whole number of seeds, 1 or more (see ")
    assert line.endswith(" --help)")


# --------------------------------------------------------------------------- the comparison itself


def test_run_comparison_of_finished_runs_writes_the_report_and_says_where(
    tmp_path: Path, write_config: Callable[..., Path]
) -> None:
    file = write_config(tmp_path)
    cfgs = [load_config(file, [f"seed={s}", f"train.output_dir={tmp_path / 'runs' / f'tiny-seed{s}'}"]) for s in (0, 1)]
    for cfg in cfgs:
        run(cfg)
    inside = Comparison(out=cfgs[0].output_dir / "report", run_dirs=[c.output_dir for c in cfgs], estimate=False)
    with pytest.raises(ConfigError, match=r"--out .*/report: inside the run folder .*tiny-seed0; choose a folder"):
        run_comparison(inside)
    assert not inside.out.exists()
    request = dataclasses.replace(inside, out=tmp_path / "report")
    report, paths = run_comparison(request)
    assert [row["seeds"] for row in report["rows"]] == [[0, 1]]
    assert {p.name for p in paths} >= {"report.md", "report.json"} and all(p.parent == request.out for p in paths)
    assert json.loads((request.out / "report.json").read_text())["rows"][0]["seeds"] == [0, 1]
    lines = summary_lines(report, paths).splitlines()
    assert lines[-1] == "report: " + ", ".join(str(p) for p in paths) and lines[-2] == ""


def test_compare_prints_the_step_ratio_first_and_leaves_a_noisy_wall_time_unresolved(
    tmp_path: Path, write_config: Callable[..., Path]
) -> None:
    file = write_config(tmp_path)
    dirs = []
    for s in (0, 1):
        cfg = load_config(file, [f"seed={s}", f"train.output_dir={tmp_path / 'runs' / f'tiny-seed{s}'}"])
        run(cfg)
        dirs.append(cfg.output_dir)
    # A second config's runs, as a shared machine would record them: its step medians half the
    # reference's in both seeds, its total seconds four times longer in seed 1 (a burst of load).
    for s, src in enumerate(list(dirs)):
        dst = tmp_path / "runs" / f"half-seed{s}"
        shutil.copytree(src, dst)
        config = yaml.safe_load((dst / "config.yaml").read_text()) | {"name": "half"}
        (dst / "config.yaml").write_text(yaml.safe_dump(config))
        summary = json.loads((dst / "summary.json").read_text())
        summary["name"] = "half"
        summary["speed"]["step_time_s"] /= 2
        summary["train_time_s"] *= 4 if s else 1
        (dst / "summary.json").write_text(json.dumps(summary))
        dirs.append(dst)
    report, paths = run_comparison(Comparison(out=tmp_path / "report", run_dirs=dirs, reference="tiny", estimate=False))
    lines = summary_lines(report, paths).splitlines()
    header = next(line for line in lines if line.startswith("config "))
    assert header.index("step × [95% CI]") < header.index("train s")
    assert "0.500 [0.500, 0.500] *" in next(line for line in lines if line.startswith("half "))
    assert report["rows"][1]["vs_reference"]["train_time_s"]["verdict"] == "unresolved (noise)"
    timing = next(i for i, line in enumerate(lines) if line.startswith("training-time differences to tiny"))
    assert lines[timing].startswith("training-time differences to tiny unresolved (noise): half; ")
    assert lines[timing - 1].startswith("accuracy differences") and lines[timing + 1].startswith("ranking")
    assert "unresolved (noise)" in (tmp_path / "report" / "report.md").read_text()


def test_predict_costs_names_each_config_and_skips_a_scheduled_one(
    tmp_path: Path, write_config: Callable[..., Path]
) -> None:
    probe = load_config(write_config(tmp_path))
    until = load_config(write_config(tmp_path), ["name=until", "freeze.preset=until:layer3"])
    gradual = load_config(
        write_config(tmp_path), ["name=gradual", "freeze.preset=gradual", "freeze.gradual=[layer4]", "train.epochs=2"]
    )
    assert gradual.freeze.scheduled
    costs = predict_costs([probe, until, gradual])
    assert sorted(costs) == ["tiny", "until"]  # a plan per phase: no single prediction fits gradual
    # The linear probe's backward stops at the head: it saves less for backward than until:layer3.
    saved = {name: c["predicted_saved_activation_bytes"] for name, c in costs.items()}
    assert saved["tiny"] < saved["until"]
