"""Pure tensor functions behind the methods: blends, boxes, masks and resized pastes.

They take explicit params (indices, lambdas, boxes, masks) and never draw random numbers,
except the ``sample_*`` functions, which take a ``generator``.
"""

from mixkit.functional.blend import bc_plus_blend, blend, mask_blend
from mixkit.functional.boxes import box_fraction, box_mask, paste_boxes, paste_resized, sample_cut_boxes
from mixkit.functional.fourier import binarise_mask, fourier_noise

__all__ = [
    "blend",
    "bc_plus_blend",
    "mask_blend",
    "sample_cut_boxes",
    "box_fraction",
    "box_mask",
    "paste_boxes",
    "paste_resized",
    "fourier_noise",
    "binarise_mask",
]
