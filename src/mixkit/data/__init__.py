"""Data sets, loaded into memory as uint8 tensors."""

from mixkit.data.fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist

__all__ = ["FASHION_MNIST_CLASSES", "load_fashion_mnist"]
