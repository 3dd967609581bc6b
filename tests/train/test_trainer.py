"""Runs whose trainable set changes, and runs that stop and resume.

Pinned here: an unfreeze event reaches the model, the optimizer (new groups at
the schedule's LR of that moment) and the record; what it unfreezes was bitwise
frozen until then, and a tampered tensor is caught; a run stopped anywhere
(mid-epoch, at an epoch boundary, by a real SIGINT) and resumed ends with
bitwise the same weights and metrics as one that never stopped; resume refuses
a different config; delta checkpoints are small, load as weights, and refuse a
changed base. All on mobilenet_v3_small (1.5 M parameters, dropout before its head, so
the RNG matters) at 32 px, 32 fake images, batches of 8."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from freezetune.config import Config, ConfigError, from_dict, set_key
from freezetune.models import build_model, load_state_dict_file
from freezetune.record import FROZEN_FILE, TIMING_KEYS, BaseMismatch, Summary, read_checkpoint
from freezetune.train import CHECKPOINT, Finished, Interrupted, LRSchedule, StopRequest, prepare_model, run

STEPS = 4  # 32 images / batch 8


# Not conftest's tiny run: mobilenet_v3_small unfrozen gradually over 3 epochs of STEPS steps, with
# layer decay and a warm-up: resume and extend must carry every piece of the trainer's state.
def config(tmp: Path, name: str, **edits: Any) -> Config:
    tree: dict[str, Any] = {
        "name": name,
        "seed": 5,
        "model": {"arch": "mobilenet_v3_small", "num_classes": 3},
        "data": {"dataset": "fake", "image_size": 32, "batch_size": 8, "train_samples": 32, "val_samples": 8},
        "freeze": {"preset": "gradual", "gradual": ["features.12", "features.11"]},
        "train": {
            "epochs": 3,
            "output_dir": str(tmp / name),
            "layer_decay": 0.5,
            "scheduler": {"name": "cosine", "warmup_epochs": 0.5},
            "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4},
        },
    }
    for key, value in edits.items():
        assert set_key(tree, key, value) is None, key
    return from_dict(tree)


def rows(folder: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (folder / name).read_text().splitlines()]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "model.pt", weights_only=True)["model"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} tensors differ, first {differ[:3]}"


HEAD, LAST, BEFORE = "classifier.3", "features.12", "features.11"


def under(modules: Iterable[str]) -> list[torch.nn.Parameter]:
    """The parameters of these modules, on a weightless (meta) copy of the model."""
    with torch.device("meta"):
        model = build_model(config(Path("/x"), "n").model, 3)[0]
    return [p for n, p in model.named_parameters() if any(n.startswith(m + ".") for m in modules)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Summary]:
    """The uninterrupted gradual run every resumed run must reproduce."""
    tmp = tmp_path_factory.mktemp("reference")
    summary = run(config(tmp, "ref")).summary
    return tmp / "ref", summary


# --------------------------------------------------------------------------- events


def test_events_reach_the_model_the_optimizer_and_the_record(reference: tuple[Path, Summary]) -> None:
    folder, summary = reference
    metrics = rows(folder, "metrics.jsonl")
    stages = [[HEAD], [HEAD, LAST], [HEAD, LAST, BEFORE]]
    assert [m["trainable_params"] for m in metrics] == [sum(p.numel() for p in under(s)) for s in stages]
    assert [m["trainable_tensors"] for m in metrics] == [len(under(s)) for s in stages] == [2, 5, 18]
    events = [e for e in rows(folder, "events.jsonl") if e["event"] == "unfreeze"]
    assert [(e["epoch"], e["target"], e["tensors"], e["origin"]) for e in events] == [
        (2, LAST, 3, "freeze.gradual[0]"),
        (3, BEFORE, 13, "freeze.gradual[1]"),
    ]
    # Each unfrozen parameter, plus the 3 buffers of each BatchNorm that stops being pinned
    # (features.12: a conv and a BatchNorm; features.11: 13 tensors, 3 BatchNorm).
    assert [e["tensors_checked"] for e in events] == [3 + 3, 13 + 3 * 3]
    assert all(e["unchanged_until_event"] for e in events)
    assert summary.frozen_unchanged and summary.frozen_until_event_unchanged
    # Groups are only ever added, one per (LR, weight decay) at each event; each tensor once.
    groups = summary.optimizer_groups
    assert [g["name"].split(":")[0] for g in groups] == ["epoch 1", "epoch 2", "epoch 3"]
    assert sum(g["tensors"] for g in groups) == 18
    assert [m["optimizer_groups"] for m in metrics] == [1, 2, 3]


def test_a_group_joins_at_the_schedules_lr_of_that_moment(reference: tuple[Path, Summary]) -> None:
    folder, _ = reference
    cfg = config(folder.parent, "ref")
    schedule = LRSchedule(cfg.train.scheduler, STEPS, cfg.train.epochs)
    joined = {e["epoch"]: e["new_groups"] for e in rows(folder, "events.jsonl") if e["event"] == "optimizer"}
    # `features` is one top-level module from the head's `classifier` (x0.5); its blocks
    # join at steps 4 and 8, each at the cosine's value of that step.
    assert joined[2][0]["lr"] == pytest.approx(0.05 * 0.5 * schedule.factor(STEPS), rel=1e-12)
    assert joined[3][0]["lr"] == pytest.approx(0.05 * 0.5 * schedule.factor(2 * STEPS), rel=1e-12)
    assert schedule.factor(STEPS) != schedule.factor(2 * STEPS)
    # At the end every group is at the same point of the same curve.
    last = rows(folder, "metrics.jsonl")[-1]["lr"]
    factor = schedule.factor(3 * STEPS - 1)
    assert sorted(last.values()) == pytest.approx(sorted(0.05 * s * factor for s in (1, 0.5, 0.5)), rel=1e-12)


def test_what_an_event_unfreezes_is_bitwise_the_base_until_then(
    tmp_path: Path, stop_after: Callable[[int], StopRequest]
) -> None:
    stopped = run(config(tmp_path, "cut"), stop=stop_after(2 * STEPS))  # stops after epoch 2
    assert isinstance(stopped, Interrupted) and stopped.epoch == 2
    saved = read_checkpoint(tmp_path / "cut" / CHECKPOINT, "test")["model"]  # frozen tensors from frozen.pt
    base = prepare_model(config(tmp_path, "cut")).model.state_dict()
    later = [k for k in base if k.startswith(BEFORE + ".")]
    assert len(later) == 13 + 3 * 3 and all(torch.equal(saved[k], base[k]) for k in later)  # unfrozen at epoch 3
    assert not torch.equal(saved[LAST + ".0.weight"], base[LAST + ".0.weight"])  # trained in epoch 2


def test_best_pt_and_checkpoint_pt_hold_what_an_event_unfreezes_later(
    tmp_path: Path, stop_after: Callable[[int], StopRequest]
) -> None:
    run(config(tmp_path, "cut"), stop=stop_after(2 * STEPS))  # stops after epoch 2, before features.11 unfreezes
    folder = tmp_path / "cut"
    base = prepare_model(config(tmp_path, "cut")).model.state_dict()
    store = torch.load(folder / FROZEN_FILE, weights_only=True)["tensors"]
    # Frozen throughout: all but the head and the two blocks the schedule unfreezes (BatchNorm buffers included).
    moving = (HEAD + ".", LAST + ".", BEFORE + ".")
    assert sorted(store) == sorted(k for k in base if not k.startswith(moving))
    assert all(torch.equal(store[k], base[k]) for k in store)
    for name in (CHECKPOINT, "best.pt"):
        own = torch.load(folder / name, weights_only=True)["shared"]["tensors"]
        assert sorted(own) == sorted(k for k in base if k.startswith(moving)), name  # features.11 among them
        assert list(read_checkpoint(folder / name, "test")["model"]) == list(base)  # whole, in the model's order


def test_resume_refuses_a_checkpoint_whose_frozen_tensors_are_gone(
    tmp_path: Path, stop_after: Callable[[int], StopRequest]
) -> None:
    cfg = config(tmp_path, "cut", **{"train.epochs": 2, "freeze.gradual": ["features.12"]})
    run(cfg, stop=stop_after(STEPS))
    store = tmp_path / "cut" / FROZEN_FILE
    kept = store.read_bytes()
    store.unlink()
    with pytest.raises(
        ConfigError,
        match=r"resume: .*checkpoint.pt holds only the tensors its run could change: the \d+ "
        r"frozen throughout the run are kept once, in frozen.pt .* and neither is in .*cut\. HINT: put ",
    ):
        run(cfg, resume=tmp_path / "cut")
    # Another run's copy (here: of other initial weights) is refused by the hash, not combined.
    other = config(tmp_path, "other", **{"train.epochs": 2, "freeze.gradual": ["features.12"], "seed": 6})
    run(other, stop=stop_after(STEPS))
    store.write_bytes((tmp_path / "other" / FROZEN_FILE).read_bytes())
    with pytest.raises(ConfigError, match=r"does not hold the ones checkpoint.pt was saved with \(hash [0-9a-f]{12}\)"):
        run(cfg, resume=tmp_path / "cut")
    store.write_bytes(kept)
    assert run(cfg, resume=tmp_path / "cut").summary.epochs == 2
    assert not store.exists()  # model.pt holds the frozen tensors now


def test_a_frozen_tensor_changed_before_its_event_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import freezetune.train.trainer as trainer_module

    real = trainer_module.fit_epoch

    def tamper(epoch: int, model: torch.nn.Module, *args: Any, **kwargs: Any):
        out = real(epoch, model, *args, **kwargs)
        if epoch == 1:
            with torch.no_grad():
                model.get_submodule(BEFORE + ".block.0.0").weight.add_(1e-3)  # still frozen here
        return out

    monkeypatch.setattr(trainer_module, "fit_epoch", tamper)
    summary = run(config(tmp_path, "tampered", **{"train.cache_features": "off"})).summary
    events = {e["target"]: e for e in rows(tmp_path / "tampered", "events.jsonl") if e["event"] == "unfreeze"}
    assert events[LAST]["unchanged_until_event"] is True
    assert events[BEFORE]["unchanged_until_event"] is False
    assert summary.frozen_until_event_unchanged is False and summary.frozen_unchanged is False


def test_cache_on_is_refused_up_front_when_a_later_phase_has_no_frozen_prefix(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        "nocache",
        **{
            "train.cache_features": "on",
            "freeze.preset": "until:features.11",
            "freeze.gradual": [],
            "freeze.schedule": [{"epoch": 3, "unfreeze": "features.0"}],
        },
    )
    with pytest.raises(ConfigError, match=r"cannot be cached \(from epoch 3\): the first layer"):
        run(cfg)
    assert not (tmp_path / "nocache").exists()


# --------------------------------------------------------------------------- resume


@pytest.mark.parametrize("stop_at", [2, STEPS, 2 * STEPS + 1], ids=["mid-1", "end-1", "mid-3"])
def test_a_stopped_and_resumed_run_ends_bitwise_equal(
    tmp_path: Path, reference: tuple[Path, Summary], stop_at: int, stop_after: Callable[[int], StopRequest]
) -> None:
    ref_folder, ref = reference
    cfg = config(tmp_path, "ref")  # same config as the reference, other folder
    cfg.train.output_dir = str(tmp_path / "ref")
    first = run(cfg, stop=stop_after(stop_at))
    assert isinstance(first, Interrupted)
    outcome = run(cfg, resume=tmp_path / "ref")
    assert isinstance(outcome, Finished)
    done = outcome.summary
    assert_same_weights(weights(tmp_path / "ref"), weights(ref_folder))
    strip = TIMING_KEYS
    got = [{k: v for k, v in r.items() if k not in strip} for r in rows(tmp_path / "ref", "metrics.jsonl")]
    want = [{k: v for k, v in r.items() if k not in strip} for r in rows(ref_folder, "metrics.jsonl")]
    assert got == want  # losses, accuracies, LRs: exactly
    assert done.schedule == ref.schedule
    assert done.frozen_unchanged


def test_ctrl_c_stops_after_the_step_saves_and_resumes_exactly(tmp_path: Path, reference: tuple[Path, Summary]) -> None:
    cfg = config(tmp_path, "ref")
    cfg.train.output_dir = str(tmp_path / "ref")
    seen = 0

    def progress(items: Iterable, desc: str, total: int) -> Iterable:
        nonlocal seen
        for item in items:
            seen += 1
            if seen == STEPS + 3:  # mid epoch 2, while a batch is in hand
                signal.raise_signal(signal.SIGINT)
            yield item

    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN in a background job
    first = run(cfg, progress=progress)
    assert isinstance(first, Interrupted) and (first.epoch, first.steps) == (2, 3)
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back
    run(cfg, resume=tmp_path / "ref")
    assert_same_weights(weights(tmp_path / "ref"), weights(reference[0]))


def test_resume_refuses_another_config_a_finished_run_and_a_folder_without_checkpoint(
    tmp_path: Path, reference: tuple[Path, Summary], stop_after: Callable[[int], StopRequest]
) -> None:
    cfg = config(tmp_path, "ref")
    cfg.train.output_dir = str(tmp_path / "ref")
    run(cfg, stop=stop_after(2))
    changed = config(tmp_path, "ref", **{"train.optimizer.lr": 0.1})
    changed.train.output_dir = str(tmp_path / "ref")
    with pytest.raises(ConfigError, match=r"train.optimizer.lr was 0.05, is now 0.1"):
        run(changed, resume=tmp_path / "ref")
    ref_cfg = config(reference[0].parent, "ref")
    assert not (reference[0] / CHECKPOINT).exists()  # a finished run keeps model.pt only
    with pytest.raises(ConfigError, match="is a finished run"):
        run(ref_cfg, resume=reference[0])
    with pytest.raises(ConfigError, match="elsewhere: no such run folder"):
        run(cfg, resume=tmp_path / "elsewhere")
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(ConfigError, match="no checkpoint.pt"):
        run(cfg, resume=tmp_path / "elsewhere")


def test_a_finished_run_that_kept_its_state_extends_exactly(tmp_path: Path) -> None:
    # Without an LR schedule (cosine depends on the total), 2 epochs then 1 more is 3 epochs.
    edits = {"train.keep_state": True, "train.scheduler": "none", "freeze.gradual": ["features.12"]}
    three = run(config(tmp_path, "three", **{**edits, "train.epochs": 3})).summary
    two = config(tmp_path, "two", **{**edits, "train.epochs": 2})
    run(two)
    assert (tmp_path / "two" / CHECKPOINT).is_file() and (tmp_path / "two" / "summary.json").is_file()
    assert not (tmp_path / "two" / FROZEN_FILE).exists()  # the kept state finds its frozen tensors in model.pt
    with pytest.raises(ConfigError, match=r"finished its 2 epochs. HINT: to train on, resume with train.epochs=M"):
        run(two, resume=tmp_path / "two")
    with pytest.raises(ConfigError, match=r"train.optimizer.lr was 0.05, is now 0.1"):
        run(config(tmp_path, "two", **{**edits, "train.epochs": 3, "train.optimizer.lr": 0.1}), resume=tmp_path / "two")
    extended = run(config(tmp_path, "two", **{**edits, "train.epochs": 3}), resume=tmp_path / "two").summary
    assert extended.epochs == three.epochs == 3
    assert_same_weights(weights(tmp_path / "two"), weights(tmp_path / "three"))
    drop = TIMING_KEYS
    strip = lambda r: {k: v for k, v in r.items() if k not in drop}  # noqa: E731
    assert [strip(r) for r in rows(tmp_path / "two", "metrics.jsonl")] == [
        strip(r) for r in rows(tmp_path / "three", "metrics.jsonl")
    ]
    assert yaml.safe_load((tmp_path / "two" / "config.yaml").read_text())["train"]["epochs"] == 3


# --------------------------------------------------------------------------- delta checkpoints


@pytest.fixture()
def base_file(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model, _ = build_model(config(tmp_path, "b").model, 3)
    path = tmp_path / "base.pt"
    torch.save(model.state_dict(), path)
    return path


def test_delta_checkpoint_is_small_and_loads_as_weights(tmp_path: Path, base_file: Path) -> None:
    edits = {
        "model.weights": str(base_file),
        "freeze.preset": "linear_probe",
        "freeze.gradual": [],
        "train.epochs": 1,
        "train.save": "delta",
        "train.scheduler": "none",
    }
    summary = run(config(tmp_path, "delta", **edits)).summary
    full = run(config(tmp_path, "full", **edits | {"train.save": "full"})).summary
    sizes = summary.checkpoint
    assert sizes["delta_bytes"] < 20_000 < 6_000_000 < sizes["full_bytes"]  # the head alone vs the whole model
    # The full size a delta run reports is what a full save writes: the file on disk, give or take the
    # one word of config that differs ("delta" vs "full"), which torch.save's 64-byte record alignment
    # can turn into 0 or 64 bytes depending on the length of the paths in the file.
    assert full.checkpoint["full_bytes"] == (tmp_path / "full" / "model.pt").stat().st_size
    assert abs(full.checkpoint["full_bytes"] - sizes["full_bytes"]) <= 64
    saved = torch.load(tmp_path / "delta" / "model.pt", weights_only=True)
    assert sorted(saved["delta"]["tensors"]) == [HEAD + ".bias", HEAD + ".weight"]
    # As weights for another run, base + delta is exactly the model the full save holds.
    assert_same_weights(load_state_dict_file(tmp_path / "delta" / "model.pt"), weights(tmp_path / "full"))


def test_delta_checkpoint_refuses_a_changed_base(tmp_path: Path, base_file: Path) -> None:
    edits = {
        "model.weights": str(base_file),
        "freeze.preset": "linear_probe",
        "freeze.gradual": [],
        "train.epochs": 1,
        "train.save": "delta",
    }
    run(config(tmp_path, "delta", **edits))
    state = torch.load(base_file, weights_only=True)
    state["features.1.block.0.0.weight"][0, 0, 0, 0] += 1.0  # one number of a frozen tensor
    torch.save(state, base_file)
    with pytest.raises(BaseMismatch, match=rf"against base weights '{base_file}'.*HINT"):
        load_state_dict_file(tmp_path / "delta" / "model.pt")


def test_a_delta_checkpoint_resumes_exactly_on_its_base(
    tmp_path: Path, stop_after: Callable[[int], StopRequest]
) -> None:
    edits = {"train.save": "delta", "train.epochs": 2, "freeze.gradual": [LAST]}
    whole = run(config(tmp_path, "whole", **edits)).summary
    cfg = config(tmp_path, "cut", **edits)
    assert isinstance(run(cfg, stop=stop_after(STEPS + 2)), Interrupted)  # mid-epoch 2: features.12 trains
    saved = torch.load(tmp_path / "cut" / CHECKPOINT, weights_only=True)
    # Only what epochs 1-2 could change: the head, features.12 and its BatchNorm buffers.
    assert {k.split(".")[0] + "." + k.split(".")[1] for k in saved["delta"]["tensors"]} == {"classifier.3", LAST}
    done = run(cfg, resume=tmp_path / "cut").summary
    mine = torch.load(tmp_path / "cut" / "model.pt", weights_only=True)["delta"]["tensors"]
    theirs = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)["delta"]["tensors"]
    assert_same_weights(mine, theirs)
    assert done.final_val_loss == whole.final_val_loss


def test_a_delta_against_random_initial_weights_loads_as_weights(tmp_path: Path) -> None:
    # model.weights: null: the base is rebuilt from the seed recorded in the delta, bitwise.
    run(
        config(
            tmp_path,
            "rand",
            **{"train.save": "delta", "train.epochs": 1, "freeze.gradual": [], "freeze.preset": "linear_probe"},
        )
    )
    assert torch.load(tmp_path / "rand" / "model.pt", weights_only=True)["delta"]["base"]["seed"] == 5
    torch.manual_seed(123)  # whatever the global RNG holds now
    rebuilt = load_state_dict_file(tmp_path / "rand" / "model.pt")
    full = run(
        config(tmp_path, "randfull", **{"train.epochs": 1, "freeze.gradual": [], "freeze.preset": "linear_probe"})
    ).summary
    assert full.frozen_unchanged
    assert_same_weights(rebuilt, weights(tmp_path / "randfull"))


def test_resume_refuses_another_number_of_processes(tmp_path: Path, stop_after: Callable[[int], StopRequest]) -> None:
    cfg = config(tmp_path, "procs")
    run(cfg, stop=stop_after(2))
    path = tmp_path / "procs" / CHECKPOINT
    state = torch.load(path, weights_only=True)
    torch.save(state | {"world_size": 2}, path)
    with pytest.raises(ConfigError, match=r"saved by 2 process\(es\); resume it with the same number \(now 1\)"):
        run(cfg, resume=tmp_path / "procs")
