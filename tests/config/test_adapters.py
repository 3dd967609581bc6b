"""Tests of the ``freeze.adapters`` key as the config loader reads it: typed entries with
defaults, and every problem named by its dotted key (whether a selector matches a layer is
the plan's business, tests/plan/test_adapters.py)."""

from __future__ import annotations

import pytest

from freezetune.config import AdapterConfig, ConfigError, from_dict, to_dict


def test_the_config_key_is_strict() -> None:
    cfg = from_dict({"name": "x", "freeze": {"adapters": [{"modules": "layer4", "rank": 8, "alpha": 16}]}})
    assert cfg.freeze.adapters == [AdapterConfig(modules="layer4", rank=8, alpha=16.0, dropout=0.0, kind="lora")]
    assert to_dict(cfg)["freeze"]["adapters"] == [
        {"modules": "layer4", "rank": 8, "alpha": 16.0, "dropout": 0.0, "kind": "lora"}
    ]
    # Without adapters the key is left out of the resolved config, which runs from before it record.
    assert "adapters" not in to_dict(from_dict({"name": "x"}))["freeze"]
    with pytest.raises(ConfigError) as err:
        from_dict({"name": "x", "freeze": {"adapters": [{"modules": [], "rank": 0, "kind": "dora", "alpah": 2}]}})
    assert err.value.problems == [
        "freeze.adapters[0].alpah: unknown key; did you mean alpha?",
        "freeze.adapters[0].rank: 0 must be >= 1",
        "freeze.adapters[0].kind: 'dora' is not one of lora; did you mean 'lora'?",
        "freeze.adapters[0].modules: expected a module name, glob or class name, or a list of them "
        "(e.g. modules: layer4), got []",
    ]
