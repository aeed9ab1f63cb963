"""Method implementations, one module per family of the survey's taxonomy.

Importing this package registers every method.
"""

from mixkit.methods.cutting import CutMix, FMix, ResizeMix
from mixkit.methods.feature import ManifoldMixup
from mixkit.methods.linear import BetweenClass, MixUp

__all__ = ["MixUp", "BetweenClass", "CutMix", "ResizeMix", "FMix", "ManifoldMixup"]
