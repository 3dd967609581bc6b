"""freeze.frozen_dtype needs autocast to the same dtype: every other pairing is one config
error that names both keys (freezetune.config.validate)."""

from __future__ import annotations

import pytest

from freezetune.config import ConfigError, from_dict


def tree(frozen: str, precision: str) -> dict:
    return {"name": "x", "freeze": {"frozen_dtype": frozen}, "train": {"precision": precision}}


@pytest.mark.parametrize(
    ("frozen", "precision"), [("fp32", "fp32"), ("fp32", "bf16"), ("bf16", "bf16"), ("fp16", "fp16")]
)
def test_matching_or_fp32_frozen_dtypes_are_accepted(frozen: str, precision: str) -> None:
    cfg = from_dict(tree(frozen, precision))
    assert (cfg.freeze.frozen_dtype, cfg.train.precision) == (frozen, precision)


def test_low_precision_frozen_weights_without_autocast_are_refused() -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(tree("bf16", "fp32"))
    assert info.value.problems == [
        "freeze.frozen_dtype: bf16 needs train.precision: bf16, and train.precision is fp32: the frozen layers would "
        "get fp32 inputs and bf16 weights. HINT: train.precision: bf16, or freeze.frozen_dtype: fp32"
    ]


@pytest.mark.parametrize(("frozen", "precision"), [("bf16", "fp16"), ("fp16", "bf16"), ("fp16", "fp32")])
def test_a_frozen_dtype_other_than_the_precision_is_refused(frozen: str, precision: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(tree(frozen, precision))
    (line,) = info.value.problems
    assert line.startswith(f"freeze.frozen_dtype: {frozen} needs train.precision: {frozen}, ")
    assert f"train.precision is {precision}" in line and "\n" not in line


def test_an_unknown_frozen_dtype_is_reported_once() -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(tree("int8", "bf16"))
    assert [p.split(":")[0] for p in info.value.problems] == ["freeze.frozen_dtype"]
