"""The autograd tour prints what PyTorch does: every fact it shows is checked here against tensors
computed independently of the tour, so the tour cannot drift from PyTorch's behaviour."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from freezetune.apps.tour import (
    backward_step,
    freezing_step,
    network_step,
    no_graph_step,
    render_step,
    tensors_step,
    tutorial_example,
)
from freezetune.cli.tour import main
from freezetune.config import from_dict


def independent_example(w_requires_grad: bool = True):
    # PyTorch's autograd tutorial example written out again, not through the tour's own builder.
    gen = torch.Generator().manual_seed(0)
    x, y = torch.ones(5), torch.zeros(3)
    w = torch.randn(5, 3, generator=gen, requires_grad=w_requires_grad)
    b = torch.randn(3, generator=gen, requires_grad=True)
    z = torch.matmul(x, w) + b
    return x, y, w, b, z, F.binary_cross_entropy_with_logits(z, y)


def fmt(t: torch.Tensor) -> str:
    return "[" + ", ".join(f"{v:.4f}" for v in t.flatten().tolist()) + "]"


def test_the_tours_example_is_the_tutorials() -> None:
    ex = tutorial_example()
    x, y, w, b, z, loss = independent_example()
    for mine, theirs in ((ex.x, x), (ex.y, y), (ex.w, w), (ex.b, b), (ex.z, z), (ex.loss, loss)):
        assert torch.equal(mine, theirs)


def test_step1_leaves_requires_grad_and_grad_fn_are_the_live_ones() -> None:
    step = tensors_step()
    x, y, w, b, z, loss = independent_example()
    live = dict(x=x, y=y, w=w, b=b, z=z, loss=loss)
    assert step.facts["leaf"] == {n: t.is_leaf for n, t in live.items()}
    assert step.facts["requires_grad"] == {n: t.requires_grad for n, t in live.items()}
    assert step.facts["z_grad_fn"] == type(z.grad_fn).__name__ == "AddBackward0"
    assert step.facts["loss_grad_fn"] == type(loss.grad_fn).__name__
    text = render_step(step)
    # The walk back through next_functions ends at one AccumulateGrad per leaf that requires grad.
    assert sum("AccumulateGrad" in line for line in step.facts["graph"]) == 2
    assert "AccumulateGrad -> w.grad" in text and "AccumulateGrad -> b.grad" in text
    assert type(z.grad_fn.next_functions[0][0]).__name__ in text  # the matmul's node, as torch names it
    assert "x.grad" not in "\n".join(step.facts["graph"])


def test_step2_gradients_error_and_doubling_match_pytorch() -> None:
    step = backward_step()
    x, y, w, b, z, loss = independent_example()
    loss.backward()
    # d mean(BCE(z, y)) / dz = (sigmoid(z) - y) / 3; dz/dw = x (ones): every row of w.grad is b.grad.
    dz = (torch.sigmoid(z.detach()) - y) / 3
    assert torch.allclose(step.facts["b_grad"], dz) and torch.equal(step.facts["b_grad"], b.grad)
    assert torch.equal(step.facts["w_grad"], w.grad) and torch.allclose(w.grad, torch.outer(x, dz))
    assert step.facts["rows_are_b"] is True
    with pytest.raises(RuntimeError) as caught:
        loss.backward()
    assert step.facts["error_type"] == type(caught.value).__name__ == "RuntimeError"
    assert step.facts["error"] == str(caught.value) and "second time" in step.facts["error"]
    assert step.facts["doubled"] is True
    assert torch.equal(step.facts["second_b_grad"], 2 * b.grad)
    text = render_step(step)
    assert fmt(b.grad) in text and fmt(2 * b.grad) in text
    assert "RuntimeError: Trying to backward through the graph a second time" in text


def test_step3_a_frozen_w_gets_no_gradient_and_b_the_same_one() -> None:
    step = freezing_step()
    *_, w, b, z, loss = independent_example(w_requires_grad=False)
    loss.backward()
    assert w.grad is None and step.facts["w_grad"] is None
    assert torch.equal(step.facts["b_grad"], b.grad)
    assert step.facts["same_b_grad"] is True and step.facts["reaches_w"] is False
    # The matmul of two tensors that need no grad recorded no node: only b's AccumulateGrad is left.
    assert [type(n).__name__ for n, _ in z.grad_fn.next_functions if n is not None] == ["AccumulateGrad"]
    text = render_step(step)
    assert "w.grad: None" in text and "-> w.grad" not in text and fmt(b.grad) in text


def test_step4_no_grad_inference_mode_detach() -> None:
    step = no_graph_step()
    *_, w, b, z, _ = independent_example()
    with torch.no_grad():
        z_ng = torch.ones(5) @ w + b
    with torch.inference_mode():
        z_im = torch.ones(5) @ w + b
    assert step.facts["no_grad_requires_grad"] is z_ng.requires_grad is False
    assert step.facts["no_grad_grad_fn"] is z_ng.grad_fn is None
    assert step.facts["inference"] is z_im.is_inference() is True
    assert step.facts["detach_shares_storage"] is (z.detach().data_ptr() == z.data_ptr()) is True
    assert step.facts["edit_seen"] is True
    before = z._version
    with torch.no_grad():
        z.detach()[0] = 0.0
    assert step.facts["version"] == (before, z._version)
    assert f"z._version {before} -> {z._version}" in render_step(step)
    # no_grad leaves the mode alone: in train mode BatchNorm's statistics move and Dropout drops under it too.
    bn, dropout = torch.nn.BatchNorm1d(3), torch.nn.Dropout(0.5)
    with torch.no_grad():
        bn(torch.randn(4, 3))
        dropped = int((dropout(torch.ones(8)) == 0).sum())
    assert bn.training and not torch.equal(bn.running_mean, torch.zeros(3)) and 0 < dropped < 8
    assert step.facts["bn_training"] is True and step.facts["bn_moved"] is True
    assert 0 < step.facts["dropped"] < 8 and step.facts["bn_moved_in_eval"] is False
    text = render_step(step)
    assert "running_mean moved: True" in text and f"zeroed {step.facts['dropped']} of 8" in text
    why = " ".join(text.split("why: ")[1].split())  # the paragraph as one line, unwrapped
    assert "Neither changes a module's mode" in why and "The mode is model.eval()'s job" in why


def tiny(preset: str = "until:layer3", precision: str = "fp32"):
    return from_dict(
        {
            "name": "tour_tiny",
            "model": {"arch": "resnet18", "num_classes": 3},
            "data": {"dataset": "fake", "image_size": 32, "batch_size": 4, "train_samples": 8, "val_samples": 4},
            "freeze": {"preset": preset},
            "train": {"precision": precision, "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}},
        }
    )


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_step5_a_frozen_prefix_records_no_graph_and_stays_bitwise(precision: str) -> None:
    step = network_step(tiny(precision=precision), "tiny", repeats=1)
    f = step.facts
    assert f["graph_start"] == "layer3"
    assert [r.name for r in f["probe"] if r.grad_fn is None] == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2"]
    assert f["grads_none"] is True and f["unchanged"] is True and f["buffers_unchanged"] is True
    assert f["with_grad"] == f["trainable"] == f["in_optimizer"]
    assert f["frozen"] == 30  # conv1, bn1, layer1, layer2: their weights, biases and BN affines
    # The frozen prefix saves nothing for backward. In bf16 the trainable weights' bf16 copies (autocast's
    # casts, saved by their convolutions) outweigh a tiny batch's activations, so the gap is smaller there.
    assert 0 < f["saved"] < f["saved_unfrozen"] / (2 if precision == "fp32" else 1)
    text = render_step(step)
    assert f"{f['saved'] / 2**20:.2f} MiB frozen vs" in text
    assert f"frozen parameters with .grad None: {f['frozen']} of {f['frozen']}" in text
    assert "the graph starts at 'layer3'" in text
    # A frozen prefix: nothing frozen runs after the start, and the explanation is the prefix's.
    assert f["frozen_in_graph"] == () and "Freezing a prefix is step 3 at scale" in text
    assert "still run backward" not in text


def test_step5_without_freezing_the_graph_starts_at_the_stem() -> None:
    f = network_step(tiny(preset="full"), "tiny", repeats=1).facts
    assert f["graph_start"] == "conv1" and f["frozen"] == 0
    assert f["saved"] == f["saved_unfrozen"]


def test_the_command_prints_every_step(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "name: tour_tiny\nmodel: {arch: resnet18, num_classes: 3}\n"
        "data: {dataset: fake, image_size: 32, batch_size: 4, train_samples: 8, val_samples: 4}\n"
        "freeze: {preset: linear_probe}\n"
    )
    assert main(["--config", str(config), "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    for n in range(1, 6):
        assert f"── {n}. " in out
    assert "the graph starts at 'fc'" in out
    assert not (tmp_path / "runs").exists()  # the tour trains nothing to disk


def test_tutorial_only_needs_no_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--tutorial-only"]) == 0
    out = capsys.readouterr().out
    assert "── 4. " in out and "── 5. " not in out


def test_the_default_config_without_the_demo_says_make_demo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # no runs/fmnist_pretrain_a here
    assert main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: model.weights") and "make demo" in err[0]


def test_a_config_mistake_is_one_line_before_anything_prints(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", "missing.yaml"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and "missing.yaml" in captured.err
