"""Tests of checkpoints (``freezetune.checkpoint``) and their atomic save
(``freezetune.record.RunDir.save_checkpoint`` / ``atomic_write_bytes``).

Pinned here: which state keys a delta keeps (:func:`delta_keys`: no frozen
parameter, no buffer of a pinned BatchNorm, everything else); base + delta is
the trained model bitwise; a base whose left-out tensors differ is refused with
:class:`BaseMismatch` and a HINT; a delta with a tensor the model lacks is
refused; the full payload round trip; a delta is smaller than a full payload
when most weights are frozen; :func:`base_hash` semantics; the RNG state round
trip (torch, NumPy, Python, including cached Gaussians) through
``torch.save``/``torch.load(weights_only=True)``; and that a failed checkpoint
save (rename or pickling) leaves the previous file whole and no temporary file.
"""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from freezetune.plan import set_dtype
from freezetune.record import (
    BaseMismatch,
    RunDir,
    atomic_write_bytes,
    base_hash,
    delta_keys,
    get_rng_state,
    is_delta,
    load_payload,
    model_payload,
    serialized_bytes,
    set_rng_state,
)

# --------------------------------------------------------------------------- tiny models


def conv_net(seed: int = 0) -> nn.Sequential:
    """0 Conv2d, 1 BatchNorm2d, 2 ReLU, 3 Flatten, 4 Linear (for 8x8 inputs)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))


STATE_KEYS = [
    "0.weight",
    "0.bias",
    "1.weight",
    "1.bias",
    "1.running_mean",
    "1.running_var",
    "1.num_batches_tracked",
    "4.weight",
    "4.bias",
]
FROZEN = {"0.weight", "0.bias", "1.weight", "1.bias"}
PINNED = {"1"}
BASE = {"model": {"arch": "conv_net", "weights": "base.pt"}, "num_classes": 2}


def trained_from(base_state: dict[str, torch.Tensor]) -> nn.Sequential:
    """The base with 0.* and 1.* frozen, BN pinned in eval, and the head trained two steps."""
    model = conv_net(seed=1)
    model.load_state_dict(base_state)
    for name, p in model.named_parameters():
        p.requires_grad_(name not in FROZEN)
    model.train()
    model[1].eval()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    for _ in range(2):
        opt.zero_grad()
        model(x).square().sum().backward()
        opt.step()
    return model


def fresh_base(base_state: dict[str, torch.Tensor]) -> nn.Sequential:
    model = conv_net(seed=2)  # different init: everything must come from base_state + payload
    model.load_state_dict(base_state)
    return model


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


@pytest.fixture
def base_state() -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in conv_net(seed=0).state_dict().items()}


# --------------------------------------------------------------------------- delta_keys


def test_state_keys_of_the_tiny_model() -> None:
    assert list(conv_net().state_dict()) == STATE_KEYS


def test_delta_keys_exclude_frozen_params_and_pinned_batchnorm_buffers() -> None:
    assert delta_keys(conv_net(), FROZEN, PINNED) == ["4.weight", "4.bias"]


def test_delta_keys_keep_buffers_of_unpinned_batchnorm() -> None:
    assert delta_keys(conv_net(), FROZEN, set()) == [
        "1.running_mean",
        "1.running_var",
        "1.num_batches_tracked",
        "4.weight",
        "4.bias",
    ]


def test_delta_keys_keep_trainable_params_of_a_pinned_batchnorm() -> None:
    assert delta_keys(conv_net(), {"0.weight", "0.bias"}, PINNED) == ["1.weight", "1.bias", "4.weight", "4.bias"]


def test_delta_keys_with_nothing_fixed_is_the_whole_state() -> None:
    assert delta_keys(conv_net(), set(), set()) == STATE_KEYS


def test_delta_keys_of_a_pinned_root_batchnorm() -> None:
    bn = nn.BatchNorm1d(3)
    assert delta_keys(bn, set(), {""}) == ["weight", "bias"]
    assert delta_keys(bn, {"weight", "bias"}, {""}) == []


# --------------------------------------------------------------------------- delta payload


def test_delta_payload_layout(base_state: dict[str, torch.Tensor]) -> None:
    trained = trained_from(base_state)
    payload = model_payload(trained, "delta", FROZEN, PINNED, BASE)
    assert is_delta(payload)
    delta = payload["delta"]
    assert delta["format"] == "freezetune-delta/1"
    assert list(delta["tensors"]) == ["4.weight", "4.bias"]
    assert delta["base"]["model"] == BASE["model"] and delta["base"]["num_classes"] == 2
    assert delta["base"]["tensors"] == 7
    assert delta["base"]["hash"] == base_hash(trained.state_dict(), ["4.weight", "4.bias"])
    assert len(delta["base"]["hash"]) == 64


def test_base_plus_delta_is_the_trained_model_bitwise(base_state: dict[str, torch.Tensor]) -> None:
    trained = trained_from(base_state)
    assert not torch.equal(trained[4].weight, base_state["4.weight"])  # training moved the head
    assert torch.equal(trained[1].running_mean, base_state["1.running_mean"])  # pinned BN did not move
    payload = model_payload(trained, "delta", FROZEN, PINNED, BASE)
    buf = io.BytesIO()
    torch.save(payload, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    model = fresh_base(base_state)
    load_payload(model, loaded)
    assert_same_state(model, trained)


def test_delta_does_not_depend_on_the_bases_copy_of_trained_tensors(base_state: dict[str, torch.Tensor]) -> None:
    trained = trained_from(base_state)
    payload = model_payload(trained, "delta", FROZEN, PINNED, BASE)
    model = fresh_base(base_state)
    with torch.no_grad():
        model[4].weight.add_(1.0)  # a tensor the delta carries: not part of the hash
    load_payload(model, payload)
    assert_same_state(model, trained)


@pytest.mark.parametrize("key", ["0.weight", "1.bias", "1.running_var", "1.num_batches_tracked"])
def test_delta_refuses_a_base_whose_left_out_tensor_differs(base_state: dict[str, torch.Tensor], key: str) -> None:
    payload = model_payload(trained_from(base_state), "delta", FROZEN, PINNED, BASE)
    model = fresh_base(base_state)
    with torch.no_grad():
        model.state_dict()[key].add_(1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(BaseMismatch) as info:
        load_payload(model, payload, where="runs/x/model.pt")
    msg = str(info.value)
    assert msg.startswith("runs/x/model.pt is a delta against base weights 'base.pt' with hash ")
    assert "HINT: restore the original base weights file" in msg
    assert "train.save: full" in msg
    assert isinstance(info.value, ValueError)
    # Nothing was loaded.
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_delta_refuses_a_last_bit_change_of_a_frozen_tensor(base_state: dict[str, torch.Tensor]) -> None:
    payload = model_payload(trained_from(base_state), "delta", FROZEN, PINNED, BASE)
    model = fresh_base(base_state)
    w = model[0].weight.data
    w.view(-1).view(torch.int32)[0] ^= 1  # one ulp: allclose would call this equal
    assert torch.allclose(w, base_state["0.weight"])
    with pytest.raises(BaseMismatch, match="HINT"):
        load_payload(model, payload)


def test_delta_refuses_a_tensor_the_model_lacks(base_state: dict[str, torch.Tensor]) -> None:
    payload = model_payload(trained_from(base_state), "delta", FROZEN, PINNED, BASE)
    payload["delta"]["tensors"]["5.weight"] = torch.zeros(2)
    with pytest.raises(BaseMismatch) as info:
        load_payload(fresh_base(base_state), payload, where="ck.pt")
    assert str(info.value) == "ck.pt: the delta holds tensors this model does not have: ['5.weight']"


def test_delta_into_a_different_architecture_is_refused(base_state: dict[str, torch.Tensor]) -> None:
    payload = model_payload(trained_from(base_state), "delta", FROZEN, PINNED, BASE)
    other = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))  # has no "4"
    with pytest.raises(BaseMismatch, match=r"does not have: \['4.bias', '4.weight'\]"):
        load_payload(other, payload)


def test_full_payload_round_trip(base_state: dict[str, torch.Tensor]) -> None:
    trained = trained_from(base_state)
    payload = model_payload(trained, "full", FROZEN, PINNED, BASE)
    assert list(payload) == ["model"]
    assert not is_delta(payload)
    assert list(payload["model"]) == STATE_KEYS
    buf = io.BytesIO()
    torch.save(payload, buf)
    buf.seek(0)
    model = conv_net(seed=5)  # a full payload needs no base
    load_payload(model, torch.load(buf, weights_only=True))
    assert_same_state(model, trained)


def test_delta_is_smaller_than_full_when_most_weights_are_frozen() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
    frozen = {"0.weight", "0.bias"}
    delta = model_payload(model, "delta", frozen, set(), BASE)
    full = model_payload(model, "full", frozen, set(), BASE)
    assert list(delta["delta"]["tensors"]) == ["2.weight", "2.bias"]
    d, f = serialized_bytes(delta), serialized_bytes(full)
    assert d < f
    assert f - d >= (64 * 64 + 64) * 4 - 2048  # the frozen tensors' bytes, less some container overhead


def test_serialized_bytes_is_the_torch_save_size() -> None:
    obj = {"w": torch.zeros(100)}
    buf = io.BytesIO()
    torch.save(obj, buf)
    assert serialized_bytes(obj) == len(buf.getvalue())


# --------------------------------------------------------------------------- base_hash


def test_base_hash_covers_exactly_the_non_excluded_tensors() -> None:
    state = {"a": torch.arange(3.0), "b": torch.ones(2), "c": torch.zeros(1)}
    h = base_hash(state, ["c"])
    assert h == base_hash({"b": torch.ones(2), "a": torch.arange(3.0), "c": torch.ones(5)}, {"c"})  # order, excluded
    assert h != base_hash({**state, "b": torch.ones(2) * 2}, ["c"])
    assert h != base_hash({**state, "b": torch.ones(2, dtype=torch.float64)}, ["c"])  # dtype counts
    assert h != base_hash({**state, "b": torch.ones(2, 1)}, ["c"])  # shape counts
    assert h != base_hash({"a": torch.arange(3.0), "B": torch.ones(2), "c": torch.zeros(1)}, ["c"])  # names count
    assert h != base_hash(state, [])


# --------------------------------------------------------------------------- RNG state


def draws() -> tuple[torch.Tensor, np.ndarray, float, float, np.ndarray]:
    return torch.rand(5), np.random.rand(5), random.random(), random.gauss(0, 1), np.random.standard_normal(3)


def assert_same_draws(a: tuple, b: tuple) -> None:
    assert torch.equal(a[0], b[0])
    assert np.array_equal(a[1], b[1])
    assert a[2] == b[2] and a[3] == b[3]
    assert np.array_equal(a[4], b[4])


def test_rng_state_round_trip_reproduces_every_generator() -> None:
    torch.manual_seed(7)
    np.random.seed(7)
    random.seed(7)
    # Leave a cached Gaussian in Python's and NumPy's generators: it is part of the state.
    random.gauss(0, 1)
    np.random.standard_normal(1)
    state = get_rng_state()
    first = draws()
    second = draws()
    assert not torch.equal(first[0], second[0])  # the generators really moved on
    set_rng_state(state)
    assert_same_draws(draws(), first)


def test_rng_state_survives_torch_save_and_weights_only_load(tmp_path: Path) -> None:
    torch.manual_seed(11)
    np.random.seed(11)
    random.seed(11)
    random.gauss(0, 1)
    np.random.standard_normal(1)
    torch.save({"rng": get_rng_state()}, tmp_path / "rng.pt")
    first = draws()
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    loaded = torch.load(tmp_path / "rng.pt", weights_only=True)
    set_rng_state(loaded["rng"])
    assert_same_draws(draws(), first)


def test_rng_state_shape() -> None:
    state = get_rng_state()
    assert list(state) == ["python", "numpy", "torch", "cuda"]
    assert state["numpy"][0] == "MT19937"
    assert state["numpy"][1].dtype == torch.int64 and state["numpy"][1].shape == (624,)
    assert isinstance(state["python"][1], list) and len(state["python"][1]) == 625
    assert torch.equal(state["torch"], torch.get_rng_state())


# --------------------------------------------------------------------------- atomic checkpoint save


class Unpicklable:
    def __reduce__(self) -> tuple:
        raise RuntimeError("cannot pickle this")


def listing(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def first_checkpoint(tmp_path: Path) -> tuple[RunDir, dict, bytes]:
    out = RunDir(tmp_path)
    state = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "epoch": 1, "rng": get_rng_state()}
    size = out.save_checkpoint("checkpoint.pt", state)
    data = (tmp_path / "checkpoint.pt").read_bytes()
    assert size == len(data)
    return out, state, data


def assert_first_intact(tmp_path: Path, state: dict, data: bytes) -> None:
    assert listing(tmp_path) == ["checkpoint.pt"]  # no temporary file left
    assert (tmp_path / "checkpoint.pt").read_bytes() == data
    loaded = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert loaded["epoch"] == 1
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert torch.equal(loaded["rng"]["torch"], state["rng"]["torch"])


def test_failed_rename_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out, state, data = first_checkpoint(tmp_path)
    calls: list[tuple] = []

    def boom(src: object, dst: object) -> None:
        calls.append((Path(str(src)).name, Path(str(dst)).name))
        assert Path(str(src)).exists()  # the new bytes were fully written to the temporary file
        raise OSError("disk pulled")

    monkeypatch.setattr("freezetune.record.rundir.os.replace", boom)
    with pytest.raises(OSError, match="disk pulled"):
        out.save_checkpoint("checkpoint.pt", {"model": {"w": torch.ones(1000)}, "epoch": 2})
    assert calls == [(".checkpoint.pt.tmp", "checkpoint.pt")]
    assert_first_intact(tmp_path, state, data)


def test_failed_pickling_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    out, state, data = first_checkpoint(tmp_path)
    with pytest.raises(RuntimeError, match="cannot pickle this"):
        out.save_checkpoint("checkpoint.pt", {"model": {"w": torch.ones(3)}, "epoch": 2, "bad": Unpicklable()})
    assert_first_intact(tmp_path, state, data)


def test_failed_fsync_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out, state, data = first_checkpoint(tmp_path)

    def no_space(fd: int) -> None:
        raise OSError("no space left")

    monkeypatch.setattr("freezetune.record.rundir.os.fsync", no_space)
    with pytest.raises(OSError, match="no space left"):
        out.save_checkpoint("checkpoint.pt", {"epoch": 2})
    assert_first_intact(tmp_path, state, data)


def test_second_save_replaces_the_first_whole(tmp_path: Path) -> None:
    out, _, data = first_checkpoint(tmp_path)
    size = out.save_checkpoint("checkpoint.pt", {"epoch": 2})
    assert listing(tmp_path) == ["checkpoint.pt"]
    assert (tmp_path / "checkpoint.pt").stat().st_size == size != len(data)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True) == {"epoch": 2}


def test_atomic_write_bytes_uses_a_hidden_sibling_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    real_replace = os.replace

    def spy(src: object, dst: object) -> None:
        seen.append(Path(str(src)).name)
        real_replace(src, dst)

    monkeypatch.setattr("freezetune.record.rundir.os.replace", spy)
    atomic_write_bytes(tmp_path / "model.pt", b"abc")
    assert seen == [".model.pt.tmp"]
    assert listing(tmp_path) == ["model.pt"]
    assert (tmp_path / "model.pt").read_bytes() == b"abc"


# --------------------------------------------------------------------------- frozen_dtype


def trained_bf16(base_state: dict[str, torch.Tensor]) -> nn.Sequential:
    """As a freeze.frozen_dtype: bf16 run leaves it: the frozen conv stored in bf16
    (the BatchNorm, a normalisation layer, in fp32)."""
    model = trained_from(base_state)
    for key in ("0.weight", "0.bias"):
        set_dtype(model, key, torch.bfloat16)
    return model


def test_a_delta_names_the_low_precision_dtypes_of_what_it_leaves_out(base_state: dict[str, torch.Tensor]) -> None:
    delta = model_payload(trained_bf16(base_state), "delta", FROZEN, PINNED, BASE)["delta"]
    assert delta["base"]["dtypes"] == {"0.weight": "bfloat16", "0.bias": "bfloat16"}
    assert model_payload(trained_from(base_state), "delta", FROZEN, PINNED, BASE)["delta"]["base"]["dtypes"] == {}


def test_fp32_base_plus_a_bf16_delta_is_the_trained_model_bitwise(base_state: dict[str, torch.Tensor]) -> None:
    trained = trained_bf16(base_state)
    buf = io.BytesIO()
    torch.save(model_payload(trained, "delta", FROZEN, PINNED, BASE), buf)
    buf.seek(0)
    model = fresh_base(base_state)  # fp32, as freezetune.models rebuilds a base
    weight = model[0].weight
    load_payload(model, torch.load(buf, weights_only=True))
    assert_same_state(model, trained)  # dtypes included: the conv is bf16 again
    assert model[0].weight is weight  # cast in place


def test_a_bf16_delta_refuses_a_changed_base_and_leaves_it_as_it_was(base_state: dict[str, torch.Tensor]) -> None:
    payload = model_payload(trained_bf16(base_state), "delta", FROZEN, PINNED, BASE)
    model = fresh_base(base_state)
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] += 1.0  # survives the bf16 rounding
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(BaseMismatch, match="HINT"):
        load_payload(model, payload)
    for k, v in model.state_dict().items():
        assert v.dtype == before[k].dtype and torch.equal(v, before[k]), k


def test_a_bf16_delta_takes_a_base_that_differs_below_bf16s_resolution(base_state: dict[str, torch.Tensor]) -> None:
    # The hash covers the tensors as training stored them, so a base that rounds to the same
    # bf16 tensor rebuilds the trained model exactly, which is all the hash promises.
    trained = trained_bf16(base_state)
    payload = model_payload(trained, "delta", FROZEN, PINNED, BASE)
    model = fresh_base(base_state)
    w = model[0].weight.data
    w.view(-1).view(torch.int32)[0] ^= 1  # one fp32 ulp
    assert torch.equal(w.to(torch.bfloat16), base_state["0.weight"].to(torch.bfloat16))
    load_payload(model, payload)
    assert_same_state(model, trained)


def test_a_delta_recording_another_dtype_is_refused(base_state: dict[str, torch.Tensor]) -> None:
    payload = model_payload(trained_bf16(base_state), "delta", FROZEN, PINNED, BASE)
    payload["delta"]["base"]["dtypes"]["0.weight"] = "load"
    with pytest.raises(BaseMismatch, match=r"ck.pt: the delta records base tensors in dtypes .*\['load'\]"):
        load_payload(fresh_base(base_state), payload, where="ck.pt")
