"""The shipped configs, installed as the package data freezetune.configs (see pyproject.toml);
this file only makes the folder a package, so an editable install finds it too."""
