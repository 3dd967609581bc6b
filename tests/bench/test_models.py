"""freezetune benchmark --models: the pure parts. Which module each model's last stage is, where
its weights go in the hub cache, what a run's record gives the table, and the goals and tables
from given numbers. The benchmark itself trains for many minutes and is run by hand
(docs/speed-and-memory.md); nothing here times anything."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torchvision

from freezetune.bench.model_goals import after_goal, auto_goal, goals_table, model_table, models_tables, plan_goal
from freezetune.bench.models import (
    CACHE_MODES,
    MODELS,
    ModelRun,
    ModelsReport,
    ModelsSettings,
    PlanPrediction,
    Timed,
    folder_bytes,
    last_stage,
    mode_order,
    place_weights,
    weights_file,
)
from freezetune.config import Rule
from freezetune.plan import ModelTree, match_rule


@pytest.mark.parametrize(
    ("arch", "stage"),
    [
        ("resnet18", "layer4"),
        ("mobilenet_v3_small", "features.12"),
        ("efficientnet_b0", "features.8"),
        ("convnext_tiny", "features.7"),
        ("vit_b_16", "encoder.layers.encoder_layer_11"),
        ("densenet121", "features.denseblock4"),  # not its closing norm5
    ],
)
def test_last_stage_of_each_model(meta_tree: Callable[..., ModelTree], arch: str, stage: str) -> None:
    tree = meta_tree(arch)
    assert last_stage(tree) == stage
    # until:<stage> leaves that stage and everything after it trainable, the head included.
    frozen = set(match_rule(Rule("until", stage, "test"), tree))
    assert frozen and not any(p.startswith(stage + ".") for p in frozen)
    assert all(p not in frozen for p in tree.param_names if p.startswith(("fc.", "classifier.", "heads.")))


def test_the_five_models_are_issue_25s() -> None:
    assert MODELS == ("resnet18", "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny", "vit_b_16")


def test_weights_file_names_the_default_weights_and_their_hub_file() -> None:
    assert weights_file("resnet18") == ("ResNet18_Weights.IMAGENET1K_V1", "resnet18-f37072fd.pth")
    assert weights_file("vit_b_16") == ("ViT_B_16_Weights.IMAGENET1K_V1", "vit_b_16-c867db91.pth")
    assert weights_file("efficientnet_b0")[1] == "efficientnet_b0_rwightman-7f5810bc.pth"


def test_placed_weights_load_as_torchvisions_without_a_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = place_weights(tmp_path, "mobilenet_v3_small")
    assert path == tmp_path / "hub" / "checkpoints" / "mobilenet_v3_small-047dcff4.pth"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args: object, **kwargs: object) -> None:
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    weights = torchvision.models.MobileNet_V3_Small_Weights.DEFAULT
    state = weights.get_state_dict(progress=False, check_hash=True)
    assert state.keys() == torchvision.models.mobilenet_v3_small().state_dict().keys()
    assert state["classifier.3.weight"].shape == (1000, 1024)
    mtime = path.stat().st_mtime_ns
    assert place_weights(tmp_path, "mobilenet_v3_small") == path and path.stat().st_mtime_ns == mtime  # kept


def test_six_rounds_run_every_mode_in_every_place_and_after_every_other_mode_alike() -> None:
    orders = [mode_order(r) for r in range(6)]
    assert all(sorted(o) == sorted(CACHE_MODES) for o in orders) and mode_order(6) == orders[0]
    places = Counter((i, m) for o in orders for i, m in enumerate(o))
    after = Counter(pair for o in orders for pair in zip(o, o[1:]))
    assert set(places.values()) == {2} and len(places) == 9
    assert set(after.values()) == {2} and len(after) == 6  # a rotation kept auto after off every round
    assert mode_order(1) == tuple(reversed(mode_order(0)))


def test_a_run_is_read_from_its_output_times_and_record(tmp_path: Path) -> None:
    cache = {
        "mode": "on",
        "used": True,
        "reason": None,
        "builds": [{"build_s": 4.0, "load_s": 0.75, "predicted_build_s": 5.0, "setup_s": 0.5}],
    }
    summary = {"startup_s": 3.5, "train_time_s": 20.0, "finish_s": 1.25, "final_val_acc": 0.5, "cache": cache}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    (tmp_path / "model.pt").write_bytes(b"x" * 5000)
    lines = [(1.0, "epoch 1: ..."), (20.0, "epoch 2: train_loss"), (21.0, "bench: finishing ..."), (21.5, "done")]
    run = ModelRun.of("resnet18", 0, "on", Timed(lines, 23.5, 0), tmp_path, epochs=2)
    assert (run.process_s, run.after_s, run.startup_s, run.train_s, run.finish_s) == (23.5, 3.5, 3.5, 20.0, 1.25)
    assert (run.built, run.build_s, run.predicted_build_s, run.setup_s, run.decision) == (True, 4.0, 5.0, 0.5, "built")
    assert run.files == {"model.pt": 5000, "summary.json": len(json.dumps(summary))}
    assert run.folder_bytes == folder_bytes(tmp_path)[0] >= 5000
    assert (
        "after the last epoch 3.50s (finish_s 1.25s)" in run.line()
        and "built in 4.00s (predicted 5.00s; reading the images 0.75s of it)" in run.line()
    )


def run(cache: str, train_s: float, after_s: float = 1.0, built: bool | None = None, round_: int = 0) -> ModelRun:
    built = cache == "on" if built is None else built
    return ModelRun(
        arch="resnet18",
        round=round_,
        cache=cache,
        process_s=train_s + 8,
        after_s=after_s,
        startup_s=4.0,
        train_s=train_s,
        finish_s=0.5,
        folder_bytes=78_500_000,
        built=built,
        build_s=8.0 if built else None,
        predicted_build_s=6.0 if cache != "off" else None,
        setup_s=0.8 if cache != "off" else None,
        reason=None,
        val_acc=0.25,
        threads={"torch": 1, "from": "train.threads", "load_1min": 2.5},
    )


def test_after_goal_takes_the_run_furthest_over_its_bound() -> None:
    # 3.3 s after 20 s of training (bound 3 s) is over; 5 s after 60 s (bound 6 s) is not.
    goal = after_goal([run("on", 60.0, after_s=5.0), run("off", 20.0, after_s=3.3)])
    assert goal.ratio == pytest.approx(1.1) and goal.met is False
    assert "at worst 3.30 s (cache off, round 1, finish_s 0.50 s of it in the run) against 3.00 s" in goal.text
    assert goal.text.endswith("1.10 of the bound, NOT met")
    assert after_goal([run("on", 60.0, after_s=5.0)]).met is True


def test_auto_goal_compares_medians_with_the_better_mode_and_says_whether_it_chose_alike() -> None:
    alike = auto_goal([run("on", 20.0), run("off", 25.0), run("auto", 20.5, built=True)])
    assert alike.ratio == pytest.approx(20.5 / 20.0) and alike.met is True
    assert alike.text.endswith(
        "auto 20.5 s against on 20.0 s (the other 25.0 s) over 1 round(s): 1.025x; auto decided as the faster mode "
        "(on) in 1 of 1; round by round over the better of that round: 1.025: met"
    )
    unlike = auto_goal([run("on", 20.0), run("off", 25.0), run("auto", 25.5, built=False)])
    assert unlike.met is False and "auto decided as the faster mode (on) in 0 of 1" in unlike.text
    # The medians decide: one round's 1.25 (a slow auto process) among three is the machine, not the choice.
    rounds = [(10.0, 12.0, 10.1), (10.4, 12.5, 13.0), (9.8, 11.9, 10.0)]
    three = [
        run(mode, t, round_=i, built=mode != "off")
        for i, ts in enumerate(rounds)
        for mode, t in zip(("on", "off", "auto"), ts, strict=True)
    ]
    goal = auto_goal(three)
    assert goal.ratio == pytest.approx(10.1 / 10.0) and goal.met is True
    assert "in 3 of 3; round by round over the better of that round: 1.010, 1.250, 1.020: met" in goal.text
    # A round without all three modes is left out; none at all is not measured.
    assert auto_goal([*three, run("on", 50.0, round_=3)]).ratio == goal.ratio
    assert auto_goal([run("on", 20.0), run("off", 25.0)]).met is None


def test_plan_goal_takes_the_largest_error_over_every_build() -> None:
    plans = [PlanPrediction("resnet18", 0, "build", 6.0, 0.7, "layer3_1_relu_1", 9.0)]
    runs = [run("on", 20.0), run("off", 25.0), run("auto", 20.5, built=True)]
    runs[2].build_s = 3.0
    goal = plan_goal(runs, plans)
    assert goal.ratio == pytest.approx(1.0) and goal.met is False  # 6 s predicted for a 3 s build: +100%
    assert "6.00 s predicted, 8.00 s built (cache on, round 1): -25%" in goal.text
    assert "6.00 s predicted, 3.00 s built (cache auto, round 1): +100%" in goal.text
    assert plan_goal(runs[:2], []).met is None


def test_tables_show_each_run_and_each_goal() -> None:
    report = ModelsReport(ModelsSettings(models=("resnet18",)), {"resnet18": "layer4"}, {"resnet18": "R18.V1"})
    report.runs = [run("on", 20.0), run("off", 25.0, after_s=3.3), run("auto", 20.5, built=True)]
    report.plans = [PlanPrediction("resnet18", 0, "build", 6.0, 0.7, "layer3_1_relu_1", 9.0)]
    report.machine = {"start": {"cores": 2, "load": [1.5, 1, 1]}, "end": {"cores": 2, "load": [2.25, 1, 1]}}
    table = model_table(report.runs, report.plans).splitlines()
    assert table[0].split()[:3] == ["round", "cache", "decision"] and len(table) == 5
    assert table[3].split()[:9] == ["1", "off", "off", "33.0", "4.0", "25.0", "3.30", "0.50", "78.5"]
    assert table[2].split()[-6:] == ["0.80", "6.00", "6.00", "8.00", "-", "2.50"]  # no reading recorded
    summary = goals_table(report).splitlines()[2]
    assert summary.split() == ["resnet18", "1.10", "NOT", "met", "1.02", "met", "-25%", "met"]
    text = models_tables(report)
    assert "machine: 2 cores, 1-minute load 1.50 and 2.25 (start and end of the benchmark)" in text
    assert "threads per run: 1 (train.threads); train.threads=1, the benchmark's default on a shared machine" in text
    assert "resnet18: until:layer4, weights R18.V1" in text


def test_cli_refuses_unknown_models_and_bad_sizes_before_any_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from freezetune.cli.benchmark import main

    monkeypatch.chdir(tmp_path)
    assert main(["--models", "resnet18,resnet_19", "--rounds", "0"]) == 2
    err = capsys.readouterr().err
    assert "--models: 'resnet_19' is not a torchvision classification model" in err and "--rounds: at least 1" in err
    # vit_b_16 takes 224 px only: its config is checked before the first run starts.
    argv = ["--models", "vit_b_16", "--image-size", "64", "--train-images", "4", "--val-images", "4"]
    assert main(argv) == 2
    assert (
        "--image-size 64 does not fit vit_b_16: Wrong image height! Expected 224 but got 64!" in capsys.readouterr().err
    )
    assert list(tmp_path.iterdir()) == []
