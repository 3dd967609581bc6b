"""Models: a classifier (torchvision, timm, or the user's own callable) with the requested
head size and its pretrained weights loaded (torchvision's weights API, timm's, a
state_dict file or a freezetune checkpoint)."""

from freezetune.models.build import LoadReport, build_model, load_state_dict_file

__all__ = ["LoadReport", "build_model", "load_state_dict_file"]
