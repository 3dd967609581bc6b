"""Models that are not torchvision's: a function of the user's named by import path, and timm
models. Built, planned by name, trained for an epoch on fake data and reloaded from the run;
each mistake is one config error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from freezetune.config import RULES, ConfigError, ModelConfig, from_dict, read_records
from freezetune.infer import load_run
from freezetune.models import build_model
from freezetune.plan import FreezeError, describe, find_head, plan_from_config
from freezetune.train import prepare_model, run

TINYNET_PARAMS = [
    "stem.0.weight",
    "stem.0.bias",
    "stem.1.weight",
    "stem.1.bias",
    "body.0.weight",
    "body.0.bias",
    "body.1.weight",
    "body.1.bias",
    "fc.weight",
    "fc.bias",
]


# Not conftest's tiny run: the user's own model (model.arch names a callable), and FakeData's
# classes chosen by index.
def config(out: Path, arch: str, preset: str = "full", **model: Any) -> dict[str, Any]:
    return {
        "name": "own",
        "model": {"arch": arch, **model},
        "data": {
            "dataset": "fake",
            "classes": [0, 1, 2],
            "image_size": 32,
            "batch_size": 8,
            "train_samples": 16,
            "val_samples": 8,
        },
        "freeze": {"preset": preset},
        "train": {"epochs": 1, "device": "cpu", "output_dir": str(out)},
    }


# --------------------------------------------------------------------------- import path


def test_an_import_path_is_called_with_num_classes_and_kwargs(user_models: str) -> None:
    model, report = build_model(ModelConfig(arch=f"{user_models}.nets:build", kwargs={"width": 4}), 3)
    assert type(model).__name__ == "TinyNet"
    assert model.fc.out_features == 3 and model.stem[0].out_channels == 4
    assert report.head == "fc" and report.source is None and report.new == list(model.state_dict())


def test_rules_name_the_modules_of_ones_own_model(user_models: str) -> None:
    model, _ = build_model(ModelConfig(arch=f"{user_models}.nets:build"), 3)
    tree = describe(model)
    assert tree.param_names == TINYNET_PARAMS
    assert plan_from_config(tree, "linear_probe", [], "eval").trainable == ["fc.weight", "fc.bias"]
    until = plan_from_config(tree, "until:body", read_records(RULES, [{"unfreeze": "stem.1"}], "freeze.rules"), "eval")
    assert until.frozen == ["stem.0.weight", "stem.0.bias"]


def test_weights_file_for_an_import_path_replaces_only_the_head(user_models: str, tmp_path: Path) -> None:
    arch = f"{user_models}.nets:build"
    torch.manual_seed(1)
    source, _ = build_model(ModelConfig(arch=arch), 10)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    model, report = build_model(ModelConfig(arch=arch, weights=str(tmp_path / "w.pt")), 3)
    assert report.new == ["fc.weight", "fc.bias"] and report.loaded == [
        k for k in source.state_dict() if not k.startswith("fc.")
    ]
    assert torch.equal(model.body[0].weight, source.body[0].weight)


def test_train_one_epoch_then_reload_the_run(user_models: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = from_dict(config(out, f"{user_models}.nets:build", "until:body", kwargs={"width": 4}))
    summary = run(cfg).summary
    assert summary.run_dir == str(out)
    trained = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    assert trained["config"]["model"]["kwargs"] == {"width": 4}
    loaded = load_run(out, "last")
    assert loaded.model.stem[0].out_channels == 4
    state = loaded.model.state_dict()
    assert state.keys() == trained["model"].keys()
    assert all(torch.equal(state[k], trained["model"][k]) for k in state)


def test_a_delta_checkpoint_of_an_import_path_rebuilds_its_base(user_models: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    raw = config(out, f"{user_models}.nets:build", "linear_probe", kwargs={"width": 4})
    raw["train"]["save"] = "delta"
    run(from_dict(raw))
    delta = torch.load(out / "model.pt", map_location="cpu", weights_only=True)["delta"]
    assert set(delta["tensors"]) == {"fc.weight", "fc.bias"}  # the rest is rebuilt from the seed and kwargs
    assert delta["base"]["model"]["kwargs"] == {"width": 4}
    state = load_run(out, "last").model.state_dict()
    assert torch.equal(state["fc.weight"], delta["tensors"]["fc.weight"]) and state["stem.0.weight"].shape[0] == 4


@pytest.mark.parametrize(
    ("attr", "expected"),
    [
        (
            "returns_a_list",
            "model.arch: ftuser.nets:returns_a_list(num_classes=3) returned list, not a torch.nn.Module",
        ),
        (
            "raises",
            "model.arch: ftuser.nets:raises(num_classes=3) raised ValueError: width must be even (nets.py:",
        ),
    ],
)
def test_a_callable_that_builds_no_model_is_one_config_error(user_models: str, attr: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_model(ModelConfig(arch=f"{user_models}.nets:{attr}"), 3)
    (problem,) = info.value.problems
    assert problem.startswith(expected), problem


def test_a_callable_that_ignores_num_classes_is_caught_before_training(user_models: str, tmp_path: Path) -> None:
    cfg = from_dict(config(tmp_path / "run", f"{user_models}.nets:ignores_num_classes"))
    with pytest.raises(ConfigError) as info:
        prepare_model(cfg)
    assert info.value.problems == [
        "model.arch: ftuser.nets:ignores_num_classes(num_classes=3) built a model whose output for one 32 px image "
        "is shape (1, 10), not a tensor of shape (1, 3): one score per class. HINT: give the model's last layer "
        "num_classes outputs (the argument it is called with) and return the logits alone"
    ]


def test_a_model_without_a_head_says_how_to_give_it_one(user_models: str) -> None:
    with pytest.raises(FreezeError, match=r"HINT: end the model in an nn.Linear .* get_classifier\(\)"):
        build_model(ModelConfig(arch=f"{user_models}.nets:headless"), 3)


# --------------------------------------------------------------------------- timm


def test_timm_heads_are_what_get_classifier_names(meta_model: Any) -> None:
    timm = pytest.importorskip("timm")
    with torch.device("meta"):
        caformer = timm.create_model("caformer_s18", num_classes=3)  # an MLP head: head.fc.fc1, head.fc.fc2
        vit = timm.create_model("test_vit", num_classes=3)
    assert find_head(describe(caformer)) == "head.fc"
    assert find_head(describe(vit)) == "head"
    assert find_head(describe(meta_model("resnet18", num_classes=3))) == "fc"  # no get_classifier: the rule


def test_timm_model_trains_an_epoch_as_a_linear_probe(tmp_path: Path) -> None:
    pytest.importorskip("timm")
    out = tmp_path / "run"
    cfg = from_dict(config(out, "timm/test_resnet", "linear_probe", kwargs={"drop_rate": 0.1}))
    prepared = prepare_model(cfg)
    assert prepared.load.head == "fc"
    assert prepared.plan.trainable == ["fc.weight", "fc.bias"]
    assert len(prepared.plan.frozen) == len(list(prepared.model.parameters())) - 2
    run(cfg)
    model = load_run(out, "last").model
    assert model.get_classifier().out_features == 3


def test_timm_kwargs_the_model_does_not_take_are_one_problem() -> None:
    pytest.importorskip("timm")
    with pytest.raises(ConfigError) as info:
        build_model(ModelConfig(arch="timm/test_resnet", kwargs={"drop_rat": 0.1}), 3)
    (problem,) = info.value.problems
    assert problem.startswith("model.kwargs: timm/test_resnet does not take {'drop_rat': 0.1}: TypeError: ")


def test_timm_distilled_models_with_two_heads_are_refused() -> None:
    pytest.importorskip("timm")
    with pytest.raises(ConfigError, match="has two classifier heads"):
        build_model(ModelConfig(arch="timm/deit_tiny_distilled_patch16_224"), 3)


def test_timm_default_weights_offline_is_one_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("timm")
    import huggingface_hub.constants as hub

    # No network, as a machine without one is: huggingface_hub reads these at import, so set both.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))  # and nothing cached
    with pytest.raises(ConfigError) as info:
        build_model(ModelConfig(arch="timm/test_resnet", weights="DEFAULT"), 3)
    (problem,) = info.value.problems
    cached = tmp_path / "hub" / "models--timm--test_resnet.r160_in1k"
    assert problem.startswith(
        "model.weights: DEFAULT for timm/test_resnet: its pretrained weights (timm/test_resnet.r160_in1k) are not "
        f"in the Hugging Face hub cache ({cached}) and could not be downloaded (LocalEntryNotFoundError: "
    ), problem
    assert problem.endswith(
        f"HINT: where there is internet, run python -c \"import timm; timm.create_model('test_resnet', "
        f'pretrained=True)" and copy {cached} to the same place here; or download '
        "https://huggingface.co/timm/test_resnet.r160_in1k/resolve/main/model.safetensors and give model.kwargs: "
        "{pretrained_cfg_overlay: {file: <that file>}}"
    )


@pytest.mark.parametrize("num_classes", [3, 1000])
def test_timm_default_weights_load_all_but_the_head(tmp_path: Path, num_classes: int) -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    pretrained = timm.create_model("test_resnet")  # what timm's DEFAULT holds: 1000 ImageNet classes
    torch.save(pretrained.state_dict(), tmp_path / "test_resnet.pth")
    # timm reads its pretrained weights from a local file when its pretrained config names one.
    overlay = {"pretrained_cfg_overlay": {"file": str(tmp_path / "test_resnet.pth")}}
    model, report = build_model(
        ModelConfig(arch="timm/test_resnet", weights="DEFAULT", kwargs=overlay, reset_head=True), num_classes
    )
    assert report.source == f"timm:{tmp_path / 'test_resnet.pth'}" and report.head == "fc"
    assert report.new == ["fc.weight", "fc.bias"]  # fresh with 3 classes, and with reset_head at 1000 too
    assert report.loaded == [k for k in pretrained.state_dict() if not k.startswith("fc.")]
    assert all(torch.equal(model.state_dict()[k], pretrained.state_dict()[k]) for k in report.loaded)
