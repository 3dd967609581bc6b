"""The predicted cost of a config: profiled in its precision and memory format, and cached so."""

from __future__ import annotations

from freezetune.config import Config, from_dict
from freezetune.measure import Profile
from freezetune.train import estimate_config


def tiny(preset: str, precision: str = "fp32", channels_last: bool = False) -> Config:
    return from_dict(
        {
            "name": f"est_{preset.replace(':', '_')}_{precision}",
            "model": {"arch": "freezetune_testnets:resnet18_narrow", "num_classes": 3},
            "data": {"dataset": "fake", "image_size": 32, "batch_size": 16},
            "freeze": {"preset": preset},
            "train": {"precision": precision, "channels_last": channels_last},
        }
    )


def test_estimate_is_profiled_and_cached_per_precision_and_memory_format() -> None:
    cache: dict[tuple, Profile] = {}
    fp32 = estimate_config(tiny("until:layer3"), reps=1, cache=cache)
    bf16 = estimate_config(tiny("until:layer3", "bf16", channels_last=True), reps=1, cache=cache)
    probe = estimate_config(tiny("linear_probe", "bf16", channels_last=True), reps=1, cache=cache)
    assert sorted(key[-2:] for key in cache) == [("bf16", True), ("fp32", False)]
    assert (fp32.profile.precision, bf16.profile.precision) == ("fp32", "bf16")
    assert probe.profile is bf16.profile  # the same architecture, shape, optimizer and precision: one profile
    assert bf16.profile is not fp32.profile and bf16.to_json()["precision"] == "bf16"
    # Really profiled in bf16: its layer3 saves bf16 activations (and autocast's bf16 weight copies).
    layer3 = {e.profile.precision: next(m for m in e.modules if m.name == "layer3") for e in (fp32, bf16)}
    assert layer3["bf16"].saved_bytes != layer3["fp32"].saved_bytes
