"""Data sets, loaded into memory as uint8 tensors, and batched training augmentations."""

from mixkit.data.augment import (
    DATASET_STATS,
    CropFlipParams,
    compute_stats,
    crop_flip,
    dataset_stats,
    normalize,
    random_crop_flip,
    sample_crop_flip,
)
from mixkit.data.fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist
from mixkit.data.sets import (
    CIFAR10_CLASSES,
    DATASET_NAMES,
    ImageData,
    UnsafeArchiveError,
    load_dataset,
    safe_extract,
    subset_per_class,
)

__all__ = [
    "CIFAR10_CLASSES",
    "DATASET_NAMES",
    "DATASET_STATS",
    "FASHION_MNIST_CLASSES",
    "CropFlipParams",
    "ImageData",
    "UnsafeArchiveError",
    "compute_stats",
    "crop_flip",
    "dataset_stats",
    "load_dataset",
    "load_fashion_mnist",
    "normalize",
    "random_crop_flip",
    "safe_extract",
    "sample_crop_flip",
    "subset_per_class",
]
