"""Tests of a run's model files (``freezetune.train.files.ModelFiles``) as far as the frozen
tensors stored once go (freezetune.record.shared), without training.

Pinned here: with ``train.save: full`` the shared set is what stays frozen (and pinned) in every
phase of the whole run, a later unfreeze excluded; best.pt's and checkpoint.pt's payload holds the
rest and a reference, ``model.pt``'s holds everything; ``frozen.pt`` holds exactly the shared
tensors with the hash the reference names, hashed once; a full fine-tune and a delta save share
nothing. On the conftest's tiny resnet18 at 32 px.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from freezetune.config import Config
from freezetune.record import is_delta, is_shared, state_hash
from freezetune.train import prepare_model
from freezetune.train.files import ModelFiles


def files_of(cfg: Config) -> tuple[ModelFiles, Any]:
    p = prepare_model(cfg)
    return ModelFiles(p.cfg, p.model, p.num_classes, ["a", "b", "c"], {}), p


def test_a_linear_probe_shares_all_but_its_head(tiny_config: Callable[..., Config]) -> None:
    files, p = files_of(tiny_config())
    state = p.model.state_dict()
    shared = files.shared_frozen(p.schedule)
    # The backbone's parameters and, pinned by the probe, its BatchNorm buffers (counters included).
    assert list(shared.keys) == sorted(k for k in state if not k.startswith("fc."))
    assert "bn1.running_mean" in shared.keys and "bn1.num_batches_tracked" in shared.keys
    best = files.model_file("full", 1, p.schedule, shared=True)
    assert is_shared(best) and "model" not in best and best["classes"] == ["a", "b", "c"]
    assert list(best["shared"]["tensors"]) == ["fc.weight", "fc.bias"]
    assert best["shared"]["frozen"]["hash"] == shared.hash == state_hash({k: state[k] for k in shared.keys})
    assert best["shared"]["order"] == list(state)
    store = files.frozen_store(p.schedule)
    assert store is not None and store["hash"] == shared.hash and list(store["tensors"]) == list(shared.keys)
    assert all(torch.equal(store["tensors"][k], state[k]) for k in shared.keys)
    last = files.model_file("full", 1, p.schedule)  # model.pt: whole, a complete model on its own
    assert not is_shared(last) and list(last["model"]) == list(state)


def test_the_shared_set_is_hashed_once(tiny_config: Callable[..., Config]) -> None:
    files, p = files_of(tiny_config())
    first = files.shared_frozen(p.schedule)
    with torch.no_grad():
        p.model.fc.weight.add_(1)  # training moves the head; the frozen tensors are not hashed again
    assert files.shared_frozen(p.schedule) is first
    assert torch.equal(
        files.payload("full", 1, p.schedule, shared=True)["shared"]["tensors"]["fc.weight"], p.model.fc.weight
    )


def test_what_a_schedule_unfreezes_later_is_not_shared(tiny_config: Callable[..., Config]) -> None:
    files, p = files_of(tiny_config({"freeze.preset": "gradual", "freeze.gradual": ["layer4"], "train.epochs": 2}))
    keys = files.shared_frozen(p.schedule).keys
    state = p.model.state_dict()
    assert list(keys) == sorted(k for k in state if not k.startswith(("fc.", "layer4.")))
    held = files.payload("full", 1, p.schedule, shared=True)["shared"]["tensors"]
    assert sorted(held) == sorted(k for k in state if k.startswith(("fc.", "layer4.")))  # in epoch 1 still frozen


def test_a_full_fine_tune_and_a_delta_share_nothing(tiny_config: Callable[..., Config]) -> None:
    files, p = files_of(tiny_config({"freeze.preset": "full"}))
    assert files.shared_frozen(p.schedule).keys == () and files.frozen_store(p.schedule) is None
    whole = files.payload("full", 1, p.schedule, shared=True)
    assert not is_shared(whole) and list(whole["model"]) == list(p.model.state_dict())
    files, p = files_of(tiny_config({"train.save": "delta"}))
    assert files.frozen_store(p.schedule) is None  # a delta leaves out the frozen tensors already
    delta = files.payload("delta", 1, p.schedule, shared=True)
    assert is_delta(delta) and not is_shared(delta)
