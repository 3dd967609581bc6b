"""Data: Fashion-MNIST, FakeData and ImageFolder loaders with class subsets and seeded
sample caps, and the local copy of Fashion-MNIST."""

from freezetune.data.fashion_mnist import DEBIAN_FMNIST_DIR, FMNIST_FILES, ensure_fashion_mnist
from freezetune.data.loaders import Loaders, build_loaders, num_classes_of

__all__ = ["DEBIAN_FMNIST_DIR", "FMNIST_FILES", "Loaders", "build_loaders", "ensure_fashion_mnist", "num_classes_of"]
