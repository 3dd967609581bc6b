"""One device resolution for train.device and the inference commands' --device."""

from __future__ import annotations

import pytest
import torch

from freezetune.config import ConfigError
from freezetune.measure import resolve_device


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine with CUDA has the device")
def test_cuda_asked_for_without_it_is_a_config_error() -> None:
    assert resolve_device("cpu", "--device") == torch.device("cpu")
    assert resolve_device("auto", "--device") == torch.device("cpu")
    with pytest.raises(ConfigError, match="--device cuda: torch.cuda.is_available.. is False"):
        resolve_device("cuda", "--device")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine with CUDA has the device")
def test_a_config_key_is_named_in_the_error_as_the_config_writes_it() -> None:
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(
        ConfigError, match=r"^train.device: 'cuda' asked for, but torch.cuda.is_available\(\) is False$"
    ):
        resolve_device("cuda")
