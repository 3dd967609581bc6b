"""compare.py / freezetune.report: two tiny fake-data runs -> report.md, .json, .png."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from freezetune.config import from_dict
from freezetune.report import build_report, load_run, markdown_table, text_table
from freezetune.train import run

ROOT = Path(__file__).resolve().parents[2]


def tiny(name: str, preset: str, out: Path):
    return from_dict(
        {
            "name": name,
            "model": {"arch": "resnet18", "num_classes": 3},
            "data": {"dataset": "fake", "image_size": 32, "batch_size": 4, "train_samples": 24, "val_samples": 8},
            "freeze": {"preset": preset},
            # The probe's cache forced on: under auto a one-epoch run would skip it (it would not pay).
            "train": {
                "epochs": 1,
                "output_dir": str(out / name),
                "optimizer": {"lr": 0.01},
                "cache_features": "auto" if preset == "full" else "on",
            },
        }
    )


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("runs")
    for name, preset in [("t_full", "full"), ("t_probe", "linear_probe")]:
        run(tiny(name, preset, out))
    return [out / "t_full", out / "t_probe"]


def test_summary_has_speed_and_memory_sections(two_runs: list[Path]) -> None:
    s = load_run(two_runs[1])
    for key in (
        "step_time_s",
        "compute_time_s",
        "data_s",
        "forward_s",
        "backward_s",
        "optimizer_s",
        "train_samples_per_s",
        "eval_samples_per_s",
        "eval_grad_samples_per_s",
        "eval_speedup_no_grad",
    ):
        assert s["speed"][key] > 0, key
    m = s["memory"]
    assert m["param_bytes_trainable"] == (512 * 3 + 3) * 4  # the probe trains fc only
    assert m["grad_bytes"] == m["param_bytes_trainable"] == m["optimizer_state_bytes"]  # SGD momentum
    assert m["peak_kind"] == "cpu_peak_rss" and m["peak_bytes"] > 0


def test_report_ratios_against_the_full_run(two_runs: list[Path]) -> None:
    report = build_report([load_run(d) for d in reversed(two_runs)])  # reference found, not just first
    assert report["reference"] == "t_full" and report["reference_why"] == "trains every parameter"
    full, probe = sorted(report["rows"], key=lambda r: r["config"])
    assert full["compute_ratio"] == 1.0 and full["training_memory_ratio"] == 1.0
    assert probe["training_memory_ratio"] < 0.05  # no conv gradients, momentum or activations to keep
    assert probe["saved_ratio"] < 0.05


def test_a_run_records_its_seed_and_cumulative_training_seconds(two_runs: list[Path]) -> None:
    run = load_run(two_runs[1])
    assert run["seed"] == 0 and [row["seed"] for row in run["metrics"]] == [0]
    (row,) = run["metrics"]
    # The probe's cache build counts as training (set-up before the pass), evaluation does not.
    assert row["train_s"] == run["train_time_s"] >= row["epoch_time_s"] + run["cache"]["build_s"] * 0.99
    assert run["train_time_s"] < run["wall_time_s"]


def test_compare_script_writes_the_report_and_its_plots(two_runs: list[Path], tmp_path: Path, capsys) -> None:
    spec = importlib.util.spec_from_file_location("compare_script", ROOT / "scripts" / "compare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main([*map(str, two_runs), "--out", str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    for column in (
        "config",
        "trainable",
        "val acc",
        "step ms",
        "× t_full",
        "samples/s",
        "predicted ×",
        "error",
        "gradients MiB",
        "optimizer state MiB",
        "saved activations MiB",
        "peak MiB",
        "Δ acc vs t_full (95% CI)",
        "train s",
        "Pareto front",
    ):
        assert f" {column} |" in md, column
    assert "| t_full |" in md and "| `t_probe` |" in md
    for image in ("report.png", "tradeoff.png", "curves.png"):
        assert f"]({image})" in md
        assert (tmp_path / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Reference: `t_full` (trains every parameter)" in md
    assert "| `freeze.preset` | full | linear_probe |" in md  # the config keys that differ
    data = json.loads((tmp_path / "report.json").read_text())
    assert [r["config"] for r in data["rows"]] == ["t_full", "t_probe"]
    assert all("predicted_step_ratio" in r for r in data["rows"])
    out = capsys.readouterr().out
    assert "reference: t_full (trains every parameter)" in out and "report:" in out
    assert "warning: reference" not in out  # a config that trains every parameter is the reference
    assert "not resolved by these runs: t_probe" in out  # one seed each: no interval


def test_compare_warns_when_the_reference_only_stands_in(two_runs: list[Path], tmp_path: Path, capsys) -> None:
    from freezetune.cli.compare import main

    assert main([str(two_runs[1]), "--out", str(tmp_path), "--no-estimate"]) == 0
    out = capsys.readouterr().out
    assert "warning: reference: t_probe (NO config trains every parameter" in out


def test_report_shows_each_runs_precision_fp32_for_older_runs(two_runs: list[Path]) -> None:
    runs = [load_run(d) for d in two_runs]
    assert runs[0]["speed"]["precision"] == "fp32"  # the runner writes it
    runs[1]["speed"] |= {"precision": "bf16", "channels_last": True}
    del runs[0]["speed"]["precision"], runs[0]["speed"]["channels_last"]  # as a run from before train.precision
    report = build_report(runs)
    assert [(r["precision"], r["channels_last"]) for r in report["rows"]] == [("fp32", False), ("bf16", True)]
    md = markdown_table(report).splitlines()
    assert md[0].startswith("| config | trainable | cache | precision | val acc |")
    assert md[2].startswith("| t_full | ") and " | fp32 | " in md[2]
    assert " | bf16, channels_last | " in md[3]
    text = text_table(report).splitlines()
    assert "precision" in text[0] and "bf16, channels_last" in text[3]


def test_report_script_writes_a_runs_own_report(two_runs: list[Path], capsys) -> None:
    spec = importlib.util.spec_from_file_location("report_script", ROOT / "scripts" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main([str(d) for d in two_runs]) == 0
    for d in two_runs:
        md = (d / "report.md").read_text()
        assert md.startswith(f"# {d.name} (seed 0)")
        assert "| epoch | train s | epoch s | train loss | val loss | val acc |" in md
        assert "![learning curve](curve.png)" in md and (d / "curve.png").read_bytes()[:4] == b"\x89PNG"
    probe = (two_runs[1] / "report.md").read_text()
    assert "building the feature cache" in probe and "Feature cache: 0.0 MiB" not in probe
    assert "t_probe (seed 0)" in capsys.readouterr().out


def test_report_script_refuses_a_folder_without_a_run_and_writes_nothing(two_runs: list[Path], tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("report_script", ROOT / "scripts" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    before = sorted(p.name for p in two_runs[0].iterdir())
    (tmp_path / "empty").mkdir()
    assert module.main([str(two_runs[0]), str(tmp_path / "empty")]) == 2
    assert sorted(p.name for p in two_runs[0].iterdir()) == before
