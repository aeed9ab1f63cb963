"""mixkit: mixed-sample data augmentation (the mixup family) for PyTorch.

Quick start::

    import torch, mixkit
    cutmix = mixkit.create("cutmix")                     # paper defaults
    out = cutmix(images, labels)                          # out.x, out.target, out.params
    loss = mixkit.mixup_cross_entropy(model(out.x), out.target)
"""

from mixkit import functional, losses, rng
from mixkit.base import MixCollate, MixMethod
from mixkit.errors import (
    DTypeError,
    HyperParameterError,
    LabelError,
    MixkitError,
    ModelError,
    ShapeError,
    UnknownHyperParameterError,
    UnknownMethodError,
)
from mixkit.hooks import mix_features
from mixkit.losses import mixup_binary_cross_entropy, mixup_cross_entropy
from mixkit.methods import (
    ERM,
    BetweenClass,
    CutMix,
    FMix,
    ManifoldMixup,
    MixUp,
    ResizeMix,
)
from mixkit.methods.cut_thumbnail import CutThumbnail
from mixkit.methods.cutting_halves import YOCO, StackMix
from mixkit.methods.cutting_masks import GMix, HMix, SmoothMix
from mixkit.methods.gridmix import GridMix
from mixkit.methods.k_mixup import KMixup
from mixkit.methods.linear_more import LocalMixup, SamplePairing
from mixkit.methods.mixed_example import MixedExample
from mixkit.methods.multi import RICAP, DCutMix, Mosaic
from mixkit.methods.random_policies import RandomChoice, RandomMix
from mixkit.registry import (
    FAMILIES,
    MethodInfo,
    create,
    list_methods,
    method_info,
    register,
)
from mixkit.types import (
    BlendParams,
    BoxParams,
    LayerParams,
    MaskParams,
    MixOutput,
    MixTarget,
    ModelMixOutput,
    Params,
    ResizeParams,
    StepOutput,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    # registry
    "FAMILIES",
    "MethodInfo",
    "register",
    "list_methods",
    "method_info",
    "create",
    # core types
    "MixMethod",
    "MixCollate",
    "MixTarget",
    "MixOutput",
    "ModelMixOutput",
    "Params",
    "BlendParams",
    "BoxParams",
    "ResizeParams",
    "MaskParams",
    "LayerParams",
    "StepOutput",
    # methods
    "ERM",
    "MixUp",
    "BetweenClass",
    "CutMix",
    "ResizeMix",
    "FMix",
    "ManifoldMixup",
    "RandomChoice",
    "RandomMix",
    "LocalMixup",
    "SamplePairing",
    "MixedExample",
    "SmoothMix",
    "GMix",
    "HMix",
    "GridMix",
    "StackMix",
    "YOCO",
    "RICAP",
    "Mosaic",
    "DCutMix",
    "CutThumbnail",
    "KMixup",
    # losses and hooks
    "mixup_cross_entropy",
    "mixup_binary_cross_entropy",
    "mix_features",
    # modules
    "functional",
    "losses",
    "rng",
    # errors
    "MixkitError",
    "ShapeError",
    "LabelError",
    "DTypeError",
    "HyperParameterError",
    "UnknownHyperParameterError",
    "UnknownMethodError",
    "ModelError",
]
