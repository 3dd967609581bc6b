"""model.arch beyond torchvision: an import path (``module.sub:callable``) and ``timm/<name>``.
Each mistake is one problem naming its key (freezetune.models' checks, as freezetune.checks
reports them); timm's preprocessing comes from its registry."""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

import pytest

from freezetune.checks import check_dict, resolve
from freezetune.config import ConfigError, ModelConfig, from_dict
from freezetune.models import weights_kind, weights_preprocessing

# Skipped without timm, found rather than imported: importing timm at collection (1.4 s) would
# cost every test worker, not only the one that runs these tests.
pytestmark = pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm is not installed")


def config(arch: str, **model: Any) -> dict[str, Any]:
    return {
        "name": "own",
        "model": {"arch": arch, **model},
        "data": {"dataset": "fake", "classes": [0, 1, 2]},
        "train": {"device": "cpu"},
    }


def problems(arch: str, **model: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        check_dict(config(arch, **model))
    return info.value.problems


def test_an_import_path_and_its_kwargs_are_accepted(user_models: str) -> None:
    cfg = check_dict(config(f"{user_models}.nets:build", kwargs={"width": 4})).cfg
    assert cfg.model.kwargs == {"width": 4}


@pytest.mark.parametrize(
    ("arch", "kwargs", "expected"),
    [
        (
            "ftuser_nowhere.models:build",
            {},
            "model.arch: module 'ftuser_nowhere.models' not found (no 'ftuser_nowhere'): it must be importable "
            "from the working directory",
        ),
        ("ftuser.nowhere:build", {}, "model.arch: module 'ftuser.nowhere' not found (no 'ftuser.nowhere')"),
        ("ftuser.nets:biuld", {}, "model.arch: ftuser.nets has no attribute 'biuld'; did you mean 'build'?"),
        ("ftuser.nets:NOT_CALLABLE", {}, "model.arch: ftuser.nets:NOT_CALLABLE is int 3, not a callable"),
        (
            "ftuser.broken:build",
            {},
            "model.arch: importing 'ftuser.broken' raised RuntimeError: CUDA kernels not built (broken.py:1)",
        ),
        (
            "ftuser.needs_dep:build",
            {},
            "model.arch: importing 'ftuser.needs_dep' failed: ModuleNotFoundError: No module named "
            "'ftuser_missing_dependency' (needs_dep.py:1)",
        ),
        ("ftuser/nets.py:build", {}, "model.arch: 'ftuser/nets.py:build' is not an import path module.sub:callable"),
        (
            "ftuser.nets:build",
            {"depth": 3},
            "model.kwargs: ftuser.nets:build cannot be called with num_classes, depth (got an unexpected keyword "
            "argument 'depth'); its signature is (num_classes, width=8)",
        ),
        ("ftuser.nets:build", {"num_classes": 3}, "model.kwargs: num_classes is passed by freezetune"),
        (
            "ftuser.nets:forgets_num_classes",
            {"width": 4},
            "model.arch: ftuser.nets:forgets_num_classes(width=8) takes no num_classes. HINT: give it a num_classes "
            "parameter and build the model's last layer with that many outputs (freezetune calls it as "
            "forgets_num_classes(num_classes=K, **model.kwargs))",
        ),
        ("resnet18", {"width": 4}, "model.kwargs: {'width': 4} given, but torchvision models take none here"),
    ],
)
def test_each_import_path_mistake_is_one_problem(
    user_models: str, arch: str, kwargs: dict[str, Any], expected: str
) -> None:
    found = problems(arch, kwargs=kwargs)
    assert len(found) == 1, found
    assert found[0].startswith(expected), found[0]


def test_named_weights_for_a_model_of_ones_own_is_a_problem(user_models: str) -> None:
    (found,) = problems(f"{user_models}.nets:build", weights="DEFAULT")
    assert found.startswith("model.weights: 'DEFAULT' is no file here, and a model of your own has no named weights")


@pytest.mark.parametrize(
    ("arch", "weights", "expected"),
    [
        ("timm/resnt18", None, "model.arch: 'timm/resnt18' is not a timm model; did you mean timm/resnet18"),
        (
            "timm/resnet18.a9_in1k",
            None,
            "model.arch: 'timm/resnet18.a9_in1k': 'a9_in1k' is not a pretrained tag of timm's resnet18; valid: "
            "a1_in1k, a2_in1k",
        ),
        ("timm/resnet18", "IMAGENET1K_V1", "model.weights: 'IMAGENET1K_V1' is not a file; a timm model takes DEFAULT"),
        ("timm:resnet18", None, "model.arch: 'timm:resnet18': a timm model is written timm/resnet18"),
    ],
)
def test_each_timm_mistake_is_one_problem(arch: str, weights: str | None, expected: str) -> None:
    found = problems(arch, weights=weights)
    assert len(found) == 1, found
    assert found[0].startswith(expected), found[0]


def test_timm_not_installed_says_which_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises ImportError
    assert problems("timm/resnet18") == [
        "model.arch: timm/resnet18 needs timm, which is not installed. HINT: pip install 'freezetune[timm]'"
    ]


def test_weights_kind_keeps_timm_default_apart_from_files() -> None:
    assert weights_kind("timm/resnet18", "DEFAULT") == "timm"
    assert weights_kind("timm/resnet18", "w.pt") == "file"
    assert weights_kind("timm/resnet18", None) == "none"
    assert weights_kind("ftuser.nets:build", "DEFAULT") == "file"
    assert weights_kind("resnet18", "DEFAULT") == "torchvision"
    assert weights_kind("resnet18", "runs/a/model.pt") == "file"


@pytest.mark.parametrize(
    ("arch", "expected"),
    [
        # timm's own numbers: input_size, floor(size / crop_pct), interpolation, mean, std.
        ("timm/test_resnet", (160, 168, "bilinear", [0.5] * 3, [0.5] * 3, "timm:timm/test_resnet.r160_in1k")),
        (
            "timm/resnet18.a1_in1k",
            (224, 235, "bicubic", [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], "timm:timm/resnet18.a1_in1k"),
        ),
    ],
)
def test_timm_default_weights_bring_timms_preprocessing(arch: str, expected: tuple) -> None:
    base, source = weights_preprocessing(ModelConfig(arch=arch, weights="DEFAULT"))
    assert base is not None
    got = (base["image_size"], base["resize_size"], base["interpolation"], base["mean"], base["std"], source)
    assert got == expected
    assert base["augment"] == "flip_crop"


def test_timm_without_weights_keeps_the_datasets_preprocessing() -> None:
    cfg, sources = resolve(from_dict(config("timm/test_resnet")))
    assert cfg.data.image_size == 32 and {str(s) for s in sources.values()} == {"fake default"}


def test_the_config_layer_alone_never_imports_the_users_module(user_models: str) -> None:
    # freezetune.config checks syntax and types only: whether the callable exists is freezetune.models'
    # question, asked by freezetune.checks.
    arch = f"{user_models}.broken:build"
    assert from_dict(config(arch)).model.arch == arch
    assert f"{user_models}.broken" not in sys.modules
    with pytest.raises(ConfigError) as info:
        check_dict(config(arch))
    assert info.value.problems[0].startswith(f"model.arch: importing '{user_models}.broken' raised RuntimeError")
