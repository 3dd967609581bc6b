"""Fixtures shared across the test folders."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn as nn
import torchvision

from freezetune.plan import ModelTree, describe


def _meta_model(arch: str, **kwargs: object) -> nn.Module:
    # Meta tensors have shapes but no storage: building vit_b_16 takes ~0.1 s.
    with torch.device("meta"):
        return torchvision.models.get_model(arch, **kwargs)


@pytest.fixture(scope="session")
def meta_model() -> Callable[..., nn.Module]:
    """``meta_model("resnet18", num_classes=3)``: a torchvision model without storage."""
    return _meta_model


@pytest.fixture(scope="session")
def meta_tree() -> Callable[..., ModelTree]:
    """``meta_tree("resnet18", num_classes=3)``: the names-only view plans are built on."""
    return lambda arch, **kwargs: describe(_meta_model(arch, **kwargs))
