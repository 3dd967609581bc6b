"""Tests of a run's frozen tensors stored once (``freezetune.record.shared``).

Pinned here: which tensors are shared (frozen parameters and the buffers of pinned
BatchNorm, nothing else) and the hash over them; the reference best.pt and checkpoint.pt
hold instead; that :func:`read_checkpoint` resolves it from ``frozen.pt`` or from a full
``model.pt`` beside the file, bitwise, in the model's key order and stored dtypes; that
a missing file and another run's file are each refused with one message naming the file,
and a wrong ``frozen.pt`` is passed over for a right ``model.pt``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn

from freezetune.config import ConfigError
from freezetune.plan import set_dtype
from freezetune.record import (
    FROZEN_FILE,
    RunDir,
    SharedFrozen,
    is_delta,
    is_shared,
    model_payload,
    read_checkpoint,
    state_hash,
)

FROZEN = {"0.weight", "0.bias", "1.weight", "1.bias"}
PINNED = {"1"}
SHARED = ["0.bias", "0.weight", "1.bias", "1.num_batches_tracked", "1.running_mean", "1.running_var", "1.weight"]


def net(seed: int = 0) -> nn.Sequential:
    """0 Conv2d, 1 BatchNorm2d (pinned), 2 Flatten, 3 Linear: the head trains; the conv is stored in bf16
    as freeze.frozen_dtype leaves it."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    for key in ("0.weight", "0.bias"):
        set_dtype(model, key, torch.bfloat16)
    return model


def state_of(obj: dict) -> dict[str, torch.Tensor]:
    return obj["model"]


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


@pytest.fixture
def folder(tmp_path: Path) -> tuple[RunDir, nn.Sequential, SharedFrozen]:
    """A run folder with frozen.pt and best.pt (epoch 3) of :func:`net`."""
    model = net()
    shared = SharedFrozen.of(model, FROZEN, PINNED)
    out = RunDir(tmp_path / "run")
    out.path.mkdir()
    out.save_checkpoint(FROZEN_FILE, shared.store(model))
    out.save_checkpoint("best.pt", {**shared.payload(model), "epoch": 3})
    return out, model, shared


def test_shared_tensors_are_the_frozen_parameters_and_the_pinned_batchnorms_buffers() -> None:
    model = net()
    shared = SharedFrozen.of(model, FROZEN, PINNED)
    state = model.state_dict()
    assert list(shared.keys) == SHARED
    assert shared.hash == state_hash({k: state[k] for k in SHARED})
    assert SharedFrozen.of(model, FROZEN, set()).keys == ("0.bias", "0.weight", "1.bias", "1.weight")


def test_the_hash_is_over_the_stored_bytes() -> None:
    a, b = net(), net()
    b[0].weight.data.view(torch.int16).view(-1)[0] += 1  # the last bit of one bf16 number
    assert SharedFrozen.of(a, FROZEN, PINNED).hash != SharedFrozen.of(b, FROZEN, PINNED).hash
    with torch.no_grad():
        b[3].weight.add_(1)  # a trainable tensor is not hashed
    c = net()
    with torch.no_grad():
        c[3].weight.add_(1)
    assert SharedFrozen.of(a, FROZEN, PINNED).hash == SharedFrozen.of(c, FROZEN, PINNED).hash


def test_the_payload_holds_the_rest_and_a_reference() -> None:
    model = net()
    shared = SharedFrozen.of(model, FROZEN, PINNED)
    payload = shared.payload(model)
    assert list(payload) == ["shared"] and is_shared(payload) and not is_delta(payload)
    assert list(payload["shared"]["tensors"]) == ["3.weight", "3.bias"]
    assert payload["shared"]["frozen"] == {"keys": SHARED, "hash": shared.hash, "files": [FROZEN_FILE, "model.pt"]}
    assert payload["shared"]["order"] == list(model.state_dict())
    store = shared.store(model)
    assert store["hash"] == shared.hash and list(store["tensors"]) == SHARED


def test_nothing_frozen_throughout_is_a_full_payload() -> None:
    model = net()
    shared = SharedFrozen.of(model, set(), set())
    assert shared.keys == () and not is_shared(shared.payload(model))
    assert_same(shared.payload(model)["model"], model.state_dict())
    assert not is_shared(model_payload(model, "full", FROZEN, PINNED, {})) and not is_shared(
        model_payload(model, "delta", FROZEN, PINNED, {"model": {}, "num_classes": 2})
    )


def test_read_checkpoint_resolves_from_frozen_pt_bitwise(folder: tuple[RunDir, nn.Sequential, SharedFrozen]) -> None:
    out, model, _ = folder
    obj = read_checkpoint(out.path / "best.pt", "--run")
    assert sorted(obj) == ["epoch", "model"] and obj["epoch"] == 3
    assert_same(obj["model"], model.state_dict())  # bf16 conv and pinned buffers included, in the model's order
    loaded = net(seed=1)
    loaded.load_state_dict(obj["model"])
    assert_same(loaded.state_dict(), model.state_dict())


def test_read_checkpoint_resolves_from_a_full_model_pt_once_frozen_pt_is_gone(
    folder: tuple[RunDir, nn.Sequential, SharedFrozen],
) -> None:
    out, model, _ = folder
    trained = net()
    with torch.no_grad():
        trained[3].weight.add_(1)  # the last epoch moved the head on; the frozen tensors are the same
    out.save_checkpoint("model.pt", model_payload(trained, "full", FROZEN, PINNED, {}))
    (out.path / FROZEN_FILE).unlink()
    assert_same(read_checkpoint(out.path / "best.pt", "--run")["model"], model.state_dict())


def test_a_reference_to_fewer_tensors_than_the_store_holds_resolves(tmp_path: Path) -> None:
    # A run extended with more epochs may share fewer tensors than its frozen.pt holds.
    model = net()
    out = RunDir(tmp_path)
    out.save_checkpoint(FROZEN_FILE, SharedFrozen.of(model, FROZEN, PINNED).store(model))
    out.save_checkpoint("checkpoint.pt", SharedFrozen.of(model, {"0.weight"}, set()).payload(model))
    assert_same(read_checkpoint(tmp_path / "checkpoint.pt", "resume")["model"], model.state_dict())


def test_a_missing_store_is_refused_naming_where_it_was_looked_for(
    folder: tuple[RunDir, nn.Sequential, SharedFrozen],
) -> None:
    out, _, _ = folder
    (out.path / FROZEN_FILE).unlink()
    with pytest.raises(ConfigError) as err:
        read_checkpoint(out.path / "best.pt", "--run")
    assert err.value.problems == [
        f"--run: {out.path / 'best.pt'} holds only the tensors its run could change: the 7 frozen throughout the run "
        f"are kept once, in frozen.pt while it runs and in model.pt once it finished, and neither is in {out.path}. "
        "HINT: put the run's frozen.pt or model.pt back beside best.pt: "
        "copy or move a run folder whole, not file by file"
    ]


def test_another_runs_frozen_tensors_are_refused_unless_model_pt_holds_the_right_ones(
    folder: tuple[RunDir, nn.Sequential, SharedFrozen],
) -> None:
    out, model, shared = folder
    other = net()
    with torch.no_grad():
        other[1].running_var.view(-1)[0] = torch.nextafter(other[1].running_var.view(-1)[0], torch.tensor(9.0))
    out.save_checkpoint(FROZEN_FILE, SharedFrozen.of(other, FROZEN, PINNED).store(other))
    with pytest.raises(ConfigError, match=r"but .*frozen.pt does not hold the ones best.pt was saved with \(hash "):
        read_checkpoint(out.path / "best.pt", "--run")
    out.save_checkpoint("model.pt", model_payload(other, "full", FROZEN, PINNED, {}))
    with pytest.raises(
        ConfigError, match=rf"{shared.hash[:12]}\): another run's file, or changed since. HINT: put back"
    ):
        read_checkpoint(out.path / "best.pt", "--run")
    out.save_checkpoint("model.pt", model_payload(model, "full", FROZEN, PINNED, {}))
    assert_same(read_checkpoint(out.path / "best.pt", "--run")["model"], model.state_dict())
