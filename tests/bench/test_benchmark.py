"""freezetune benchmark: both loops train alike in every precision and memory format, and
the table has a row per (preset, size, precision, memory format) with the ratios."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from freezetune.bench import BenchResult, bench_pair, benchmark_configs
from freezetune.cli.benchmark import highest_ratio, main, modes_note
from freezetune.config import Config, from_dict, to_dict
from freezetune.plan import is_pinned_eval


def tiny(
    precision: str = "fp32", channels_last: bool = False, preset: str = "until:layer3", arch: str = "resnet18"
) -> Config:
    return from_dict(
        {
            "name": "bench_tiny",
            "seed": 1,
            "model": {"arch": arch, "num_classes": 3},
            "data": {"dataset": "fake", "image_size": 32, "batch_size": 4},
            "freeze": {"preset": preset},
            "train": {
                "precision": precision,
                "channels_last": channels_last,
                "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
            },
        }
    )


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_both_loops_train_bitwise_alike(precision: str) -> None:
    # The same model, batch and optimizer; both loops run the same ops in the same order (autocast,
    # the loss in fp32, SGD): on one device they must agree bit for bit, in bf16 as in fp32. Two
    # steps, so momentum and the channels-last weights of the second step are covered.
    pair = bench_pair(tiny(precision, channels_last=True), steps=2)
    before = {k: v.clone() for k, v in pair.framework_model.state_dict().items()}
    pair.framework()
    pair.hand()
    fw, hand = pair.framework_model.state_dict(), pair.hand_model.state_dict()
    assert not torch.equal(fw["layer4.0.conv1.weight"], before["layer4.0.conv1.weight"])  # it trained
    assert torch.equal(fw["layer1.0.conv1.weight"], before["layer1.0.conv1.weight"])  # frozen prefix
    assert torch.equal(fw["layer1.0.bn1.running_mean"], before["layer1.0.bn1.running_mean"])  # pinned in eval
    assert [k for k in fw if not torch.equal(fw[k], hand[k])] == []
    assert pair.framework_model.layer4[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_fp16_hand_loop_scales_the_loss_as_freezetune_does(user_models: str) -> None:
    # fp16 convolutions are slow on a CPU: the tests' small convnet (tests/conftest.py).
    pair = bench_pair(tiny("fp16", preset="full", arch=f"{user_models}.nets:build"), steps=2)
    pair.framework()
    pair.hand()
    fw, hand = pair.framework_model.state_dict(), pair.hand_model.state_dict()
    assert [k for k in fw if not torch.equal(fw[k], hand[k])] == []


def test_variants_are_timed_together_with_ratios_to_fp32() -> None:
    results = benchmark_configs([tiny("fp32"), tiny("bf16", channels_last=True)], steps=1, rounds=1)
    fp32, bf16 = results
    assert (fp32.precision, fp32.memory_format, bf16.precision, bf16.memory_format) == (
        "fp32",
        "contiguous",
        "bf16",
        "channels_last",
    )
    assert fp32.vs_fp32 == 1.0 and bf16.vs_fp32 is not None and bf16.vs_fp32 > 0
    assert all(r.framework_ms > 0 and r.hand_ms > 0 and r.ratio > 0 for r in results)
    # Without an fp32 config among them there is nothing to compare with.
    assert benchmark_configs([tiny("bf16")], steps=1, rounds=1)[0].vs_fp32 is None


def test_cli_sweeps_precisions_and_memory_formats(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "bench.json"
    argv = ["--presets", "linear_probe", "--sizes", "32", "--channels-last", "--precision", "fp32,bf16"]
    argv += ["data.batch_size=2", "--steps", "1", "--rounds", "1", "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    table = text[text.index("preset ") :]
    header = table.splitlines()[0]
    for column in ("precision", "memory format", "freezetune ms/step", "hand-written ms/step"):
        assert column in header, column
    assert "freezetune / hand" in header and "× freezetune fp32" in header
    rows = json.loads(out.read_text())
    assert [(r["name"], r["precision"], r["memory_format"]) for r in rows] == [
        ("linear_probe", "fp32", "channels_last"),
        ("linear_probe", "bf16", "channels_last"),
    ]
    assert rows[0]["vs_fp32"] == 1.0 and rows[1]["vs_fp32"] > 0


def test_cli_rejects_an_unknown_memory_format(capsys: pytest.CaptureFixture) -> None:
    assert main(["--memory-format", "nhwc", "--steps", "1", "--rounds", "1"]) == 2
    assert "--memory-format: expected contiguous or channels_last, got 'nhwc'" in capsys.readouterr().err


def test_auto_signal_cost_is_measured_beside_the_step() -> None:
    from freezetune.bench import benchmark_auto_signal
    from freezetune.config import from_dict

    cfg = from_dict(
        {
            "name": "sig",
            "model": {"arch": "resnet18", "num_classes": 3},
            "data": {"dataset": "fake", "image_size": 16, "batch_size": 4},
            "freeze": {"preset": "auto", "auto": {"sample_every": 4}},
            "train": {"epochs": 3},  # auto's first decision acts in epoch 3: fewer epochs are refused
        }
    )
    r = benchmark_auto_signal(cfg, rounds=3)
    assert r.step_ms > 0 and r.sample_ms > 0 and r.sample_every == 4
    assert r.per_step == r.sample_ms / r.step_ms / 4 and r.to_json()["share_per_step"] == r.per_step


def tiny_vit(precision: str = "fp32") -> Config:
    # torchvision's own VisionTransformer, two blocks: the first frozen (and pinned in eval by the
    # default freeze.frozen_modules: eval), the second and the head training.
    vit = {"image_size": 32, "patch_size": 16, "num_layers": 2, "num_heads": 2, "hidden_dim": 16, "mlp_dim": 32}
    return from_dict(
        {
            "name": "bench_vit",
            "seed": 1,
            "model": {
                "arch": "torchvision.models.vision_transformer:VisionTransformer",
                "num_classes": 3,
                "kwargs": vit,
            },
            "data": {"dataset": "fake", "image_size": 32, "batch_size": 4},
            "freeze": {"preset": "until:encoder.layers.encoder_layer_1"},
            "train": {"precision": precision, "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}},
        }
    )


def _native_mha_calls(fn: Callable[[], None]) -> int:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.count for e in prof.key_averages() if e.key == "aten::_native_multi_head_attention")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_hand_loop_holds_the_plans_frozen_modules_in_eval(precision: str) -> None:
    # A frozen nn.MultiheadAttention in eval takes PyTorch's fused inference kernel (CPU autocast does
    # not stop it); in train mode it does not. The hand loop must run the frozen block as freezetune
    # does, or the benchmark times the modes (20x on vit_b_16 in bf16), not freezetune's overhead.
    pair = bench_pair(tiny_vit(precision), steps=2)
    fw, hand = pair.framework_model, pair.hand_model
    names = {id(m): n for n, m in hand.named_modules()}
    held = sorted(names[id(m)] for m in pair.held_in_eval)
    assert held == sorted(n for n, m in fw.train().named_modules() if not m.training)
    assert "encoder.layers.encoder_layer_0.self_attention" in held
    assert "encoder.layers.encoder_layer_1.self_attention" not in held and "heads.head" not in held
    assert not any(is_pinned_eval(m) for m in hand.modules())  # the hand loop sets the modes itself
    # The frozen block's attention, once a step (the profiler lists it twice under autocast: its cast, then the op).
    calls = _native_mha_calls(pair.framework)
    assert calls == (2 if precision == "fp32" else 4) and _native_mha_calls(pair.hand) == calls
    assert {n for n, m in hand.named_modules() if not m.training} == set(held)
    fw_state, hand_state = fw.state_dict(), hand.state_dict()
    assert [k for k in fw_state if not torch.equal(fw_state[k], hand_state[k])] == []
    # Without the plan's modes (the hand loop before it held them) the frozen block takes the slow path.
    hand.train()
    with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
        x = torch.randn(2, 3, 32, 32)
        assert _native_mha_calls(lambda: hand(x)) == 0


def test_results_and_output_say_what_both_loops_hold_in_eval(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (vit,) = benchmark_configs([tiny_vit()], steps=1, rounds=1)
    assert (vit.held_in_eval, vit.fast_attention) == (14, 1)
    assert vit.to_json()["fast_attention"] == 1
    config = tmp_path / "vit.yaml"
    config.write_text(yaml.safe_dump(to_dict(tiny_vit())))
    argv = ["--config", str(config), "--presets", "until:encoder.layers.encoder_layer_1", "--sizes", "32"]
    assert main([*argv, "--steps", "1", "--rounds", "1", "--out", str(tmp_path / "b.json")]) == 0
    text = capsys.readouterr().out
    assert "Both loops train with the plan's pinned modules in eval (14 of them" in text
    assert "torch._native_multi_head_attention" in text
    assert "highest freezetune / hand ratio " in text and "(until:encoder.layers.encoder_layer_1 @ 32px, fp32" in text


def test_modes_note_and_highest_ratio_name_their_rows() -> None:
    def row(name: str, ratio: float, held: int, attention: int = 0) -> BenchResult:
        return BenchResult(name, 32, "cpu", 2.0, 2.0 / ratio, ratio, held_in_eval=held, fast_attention=attention)

    assert modes_note([row("full", 1.0, 0)]) == (
        "The plan pins no module in eval (freeze.batchnorm, freeze.frozen_modules): both loops train every module."
    )
    note = modes_note([row("full", 1.0, 0), row("linear_probe", 0.9, 60)])
    assert note.startswith("Both loops train with the plan's pinned modules in eval (0, 60 of them")
    assert "MultiheadAttention" not in note
    assert "torch._native_multi_head_attention" in modes_note([row("vit", 1.0, 14, attention=1)])
    assert highest_ratio([row("full", 0.97, 0), row("linear_probe", 1.04, 60)]).startswith(
        "highest freezetune / hand ratio 1.040 (linear_probe @ 32px, fp32, contiguous)"
    )
