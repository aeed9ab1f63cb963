"""Pure tensor functions behind the methods: blends, boxes, masks and resized pastes.

They take explicit params (indices, lambdas, boxes, masks) and never draw random numbers,
except the ``sample_*`` functions, which take a ``generator``.
"""

from mixkit.functional import _slic, alloc, augment_chains
from mixkit.functional.blend import bc_plus_blend, blend, blend_, gather_rows_scratch, mask_blend, release_blend_scratch
from mixkit.functional.boxes import box_fraction, box_mask, paste_boxes, paste_boxes_, sample_cut_boxes
from mixkit.functional.resized_paste import paste_resized
from mixkit.functional.fourier import binarise_mask, fourier_noise

__all__ = [
    "blend",
    "blend_",
    "gather_rows_scratch",
    "release_scratch",
    "bc_plus_blend",
    "mask_blend",
    "sample_cut_boxes",
    "box_fraction",
    "box_mask",
    "paste_boxes",
    "paste_boxes_",
    "paste_resized",
    "fourier_noise",
    "binarise_mask",
]


def release_scratch() -> None:
    """Free every buffer this thread keeps for reuse across calls: the in-place methods'
    partner rows, the float32 scratch of half-precision blends, AugMix's chain buffer and the
    superpixel (SLIC) workspace; and the freed large output blocks kept for reuse (every thread's:
    :func:`mixkit.functional.alloc.release_blocks`). They are made again when next needed."""
    release_blend_scratch()
    _slic.release_workspace()
    augment_chains.release_chain_buffer()
    alloc.release_blocks()
