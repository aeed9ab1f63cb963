"""Method implementations, one module per family of the survey's taxonomy.

Importing this package registers every method: each module of the package is imported, so a
new module registers its methods by being there.
"""

import importlib
import pkgutil

from mixkit.methods.baseline import ERM
from mixkit.methods.cutting import CutMix, FMix, ResizeMix
from mixkit.methods.feature import ManifoldMixup
from mixkit.methods.linear import BetweenClass, MixUp

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["ERM", "MixUp", "BetweenClass", "CutMix", "ResizeMix", "FMix", "ManifoldMixup"]
