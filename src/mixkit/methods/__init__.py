"""Method implementations, one module per family of the survey's taxonomy.

Importing this package registers every method.
"""

from mixkit.methods.baseline import ERM
from mixkit.methods.cutting import CutMix, FMix, ResizeMix
from mixkit.methods.feature import ManifoldMixup
from mixkit.methods.linear import BetweenClass, MixUp

__all__ = ["ERM", "MixUp", "BetweenClass", "CutMix", "ResizeMix", "FMix", "ManifoldMixup"]
