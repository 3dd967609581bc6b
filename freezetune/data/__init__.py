"""Data: Fashion-MNIST, FakeData and ImageFolder loaders with class subsets (by index or
name) and seeded sample caps, the transforms of a resolved preprocessing, the image
loader, the local copy of Fashion-MNIST, and the checks of a config against its dataset."""

from freezetune.data.fashion_mnist import (
    DEBIAN_FMNIST_DIR,
    FASHION_MNIST_CLASSES,
    FMNIST_FILES,
    ensure_fashion_mnist,
    export_png_folder,
    fashion_mnist_index,
    folder_name,
)
from freezetune.data.imagefolder import IMAGE_EXTENSIONS, checked_image_folder, folder_classes, load_image
from freezetune.data.loaders import Loaders, build_loaders, class_indices, class_names, num_classes_of
from freezetune.data.problems import data_problems
from freezetune.data.transforms import eval_transform, train_transform

__all__ = [
    "DEBIAN_FMNIST_DIR",
    "FASHION_MNIST_CLASSES",
    "FMNIST_FILES",
    "IMAGE_EXTENSIONS",
    "Loaders",
    "build_loaders",
    "checked_image_folder",
    "class_indices",
    "class_names",
    "data_problems",
    "ensure_fashion_mnist",
    "eval_transform",
    "export_png_folder",
    "fashion_mnist_index",
    "folder_classes",
    "folder_name",
    "load_image",
    "num_classes_of",
    "train_transform",
]
