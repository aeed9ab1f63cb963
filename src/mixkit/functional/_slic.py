"""The batched SLIC behind :func:`mixkit.functional.superpixels.slic_labels`, tuned for CPU.

Every floating-point operation of the plain batched formulation is kept, in the same order,
so on CPU the labels are the same bit for bit (on GPUs that formulation's scatter-adds are
atomic, so unordered: there is no bitwise reference): each centre's sums add its pixels one
by one in block order, each candidate's distance is ``|c|^2 - 2 <f, c>`` computed by the
same chain of products and fused multiply-adds. What is tuned is how the work is laid out:

* pixels live in "slots" ``(ry, rx, P, B)`` (:class:`Layout`): per-block values broadcast
  over a block's pixels with unit-stride inner loops, and the 4 candidates of every pixel
  are scored in one pass per feature;
* the sums are scatter-adds over a flat index, on CPU complex64 ones (two float32 features
  per pass);
* the nearest candidate is picked with float comparisons and ``lerp`` (0/1 weights, exact);
* the work tensors are kept per thread from one call to the next (:func:`workspace`).

The plain formulation, for reference, is ``plain_slic`` in ``tests/test_superpixel_grid.py``.
"""

from __future__ import annotations

import functools
import math
import threading

import torch
from torch import Tensor
from mixkit._device import upload
from mixkit.functional.fastmath import power_

#: sRGB (D65) to XYZ, and the D65 white point (the matrix and white scikit-image uses).
RGB_TO_XYZ = ((0.412453, 0.357580, 0.180423), (0.212671, 0.715160, 0.072169), (0.019334, 0.119193, 0.950227))
WHITE = (0.95047, 1.0, 1.08883)
#: Bytes of work tensors a thread keeps between calls in each of its (at most two) workspaces
#: (:func:`workspace`): 27 MB serve a batch of 128 RGB images of 32 x 32 pixels, 102 MB one of
#: 64 x 64; larger batches are segmented in chunks that fit (16 images of 224 x 224).
WORKSPACE_BYTES = 176 << 20


def memory_format(t: Tensor) -> torch.memory_format | None:
    """``t``'s layout if it is contiguous or (4-D) channels-last, else ``None``."""
    if t.is_contiguous():
        return torch.contiguous_format
    if t.ndim == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return None


class Workspace:
    """Named work tensors, kept (up to ``limit`` bytes) for the next call that asks for them
    by the same names; with ``limit`` 0 it just allocates."""

    def __init__(self, device: torch.device, limit: int = 0) -> None:
        self.device, self.room = device, limit
        self.tensors: dict[str, Tensor] = {}

    def get(
        self,
        name: str,
        shape: tuple[int, ...],
        dtype: torch.dtype = torch.float32,
        layout: torch.memory_format = torch.contiguous_format,
        zero: bool = False,
    ) -> Tensor:
        """The tensor ``name``: uninitialised, or zero when first made if ``zero``."""
        t = self.tensors.get(name)
        if t is None:
            t = torch.empty(shape, dtype=dtype, device=self.device, memory_format=layout)
            if zero:
                t.zero_()
            if t.nbytes <= self.room:
                self.tensors[name], self.room = t, self.room - t.nbytes
        return t

    def like(self, name: str, t: Tensor) -> Tensor:
        """A tensor laid out as ``t`` (a new one unless ``t`` is contiguous or channels-last)."""
        fmt = memory_format(t)
        return torch.empty_like(t) if fmt is None else self.get(name, tuple(t.shape), t.dtype, fmt)


_local = threading.local()


def workspace(key: tuple, device: torch.device) -> Workspace:
    """This thread's workspace for calls with ``key`` (a new one when the key changes).

    On CPU a freed multi-megabyte tensor goes back to the system, and each 4 KB page of the
    next one faults when first written (about 4 us on a virtual machine: a 1.5 MB buffer
    costs 1.6 ms, ten passes of arithmetic over it); SLIC needs the same buffers call after
    call, so each thread keeps those of its last two keys (a batch segmented in chunks uses
    two: the full chunks' and the last one's). Other devices cache memory already.
    """
    if device.type != "cpu":
        return Workspace(device)
    kept = getattr(_local, "workspaces", None)
    if kept is None:
        kept = _local.workspaces = {}
    ws = kept.pop(key, None)
    if ws is None:
        ws = Workspace(device, WORKSPACE_BYTES)
        while len(kept) >= 2:  # dict order: the least recently used first
            del kept[next(iter(kept))]
    kept[key] = ws  # the most recently used last
    return ws


def release_workspace() -> None:
    """Drop this thread's kept workspaces (made again by the next call)."""
    if hasattr(_local, "workspaces"):
        del _local.workspaces


#: about how many bytes of work tensors SLIC needs per pixel of an RGB image (see segment)
BYTES_PER_PIXEL = 208


def lab_into(rgb: Tensor, out: Tensor, ws: Workspace) -> None:
    """Write :func:`~mixkit.functional.superpixels.rgb_to_lab` of ``rgb`` ``(B, 3, H, W)``
    into ``out`` (a float32 view), the same values bit for bit, in work tensors.

    The branches of the piecewise curves are picked by ``lerp`` with 0/1 weights (exact, and
    faster than ``torch.where``). Each power (:func:`~mixkit.functional.fastmath.power_`, as in
    ``rgb_to_lab``) runs on elements in the same
    memory order as in ``rgb_to_lab`` (sRGB as the input, XYZ planes as the input's planes):
    which elements take the vectorised or the scalar code path of ``log2`` and ``exp2`` must
    not change, the two may round apart.
    """
    lin = rgb.to(torch.float32)
    if memory_format(lin) is None:
        lin = lin.clamp(0.0, 1.0)
    else:
        lin = torch.clamp(lin, 0.0, 1.0, out=ws.like("lin", lin))
    low = torch.le(lin, 0.04045, out=ws.like("low", lin))
    lo = torch.div(lin, 12.92, out=ws.like("lo", lin))
    power_(lin.add_(0.055).div_(1.055), 2.4).lerp_(lo, low)  # as rgb_to_lab
    if memory_format(lin) == torch.channels_last:  # channels apart, for unit-stride planes
        lin = ws.get("planar", tuple(lin.shape)).copy_(lin)
    order = sorted(range(3), key=lambda d: -lin[:, 0].stride(d))  # a plane's memory order
    red, green, blue = (plane.permute(order) for plane in lin.unbind(1))
    rows = [[row[i] / white for row, white in zip(RGB_TO_XYZ, WHITE)] for i in range(3)]
    rows = torch.tensor(rows, device=lin.device).view(3, 3, 1, 1, 1)  # (r g b, X Y Z, 1, 1, 1)
    t = torch.mul(red, rows[0], out=ws.get("xyz", (3,) + tuple(red.shape)))
    t.addcmul_(green, rows[1]).addcmul_(blue, rows[2])  # X, Y, Z over the white: >= 0, no clamp needed
    small = torch.le(t, 0.008856, out=ws.get("small", t.shape))
    linear = torch.mul(t, 7.787, out=ws.get("linear", t.shape)).add_(16.0 / 116.0)
    for plane in t:
        power_(plane, 1.0 / 3.0)  # as rgb_to_lab
    fx, fy, fz = t.lerp_(linear, small)
    torch.mul(fy, 116.0, out=out[:, 0].permute(order)).sub_(16.0)
    torch.sub(fx, fy, out=out[:, 1].permute(order)).mul_(500.0)
    torch.sub(fy, fz, out=out[:, 2].permute(order)).mul_(200.0)


class Layout:
    """The initial grid and the pixels regrouped in "slots": blocks of a cell's size shifted
    by half a cell, so the pixels of one block all lie between the same 2 x 2 initial
    centres, their candidates (SLIC's 2S x 2S window around each centre, placed at birth).

    A slot tensor is ``(ry, rx, P, B)``: block row and column, pixel in the block (zero
    padding at the borders), image innermost. A per-block value ``(ry, rx, 1, B)`` so
    broadcasts over the block's pixels with unit-stride inner loops, and the flat order
    visits each image's pixels block by block, the order in which the sums add them.
    """

    def __init__(self, h: int, w: int, grid: tuple[int, int, int, int], device: torch.device) -> None:
        self.h, self.w = h, w
        self.gy, self.gx, self.bh, self.bw = grid
        self.k = self.gy * self.gx
        self.top, self.left = self.bh // 2, self.bw // 2
        self.ry = (h + self.top - 1) // self.bh + 1
        self.rx = (w + self.left - 1) // self.bw + 1
        r = torch.arange(self.ry, device=device).view(-1, 1)
        c = torch.arange(self.rx, device=device).view(1, -1)
        rows = [(r - 1 + d).clamp(0, self.gy - 1) * self.gx for d in (0, 1)]
        cols = [(c - 1 + d).clamp(0, self.gx - 1) for d in (0, 1)]
        self.candidates = torch.stack([y + x for y in rows for x in cols]).view(4, self.ry, self.rx, 1, 1)
        oy, ox = (r * self.bh - self.top).float(), (c * self.bw - self.left).float()
        self.origin = torch.stack(torch.broadcast_tensors(oy, ox)).view(2, 1, self.ry, self.rx, 1, 1)
        py, px = torch.meshgrid(torch.arange(self.bh), torch.arange(self.bw), indexing="ij")
        self.local = upload(torch.stack([py, px]).view(2, -1, 1).float(), device)  # (2, P, 1): offsets in a block
        ys = oy.view(-1, 1, 1) + self.local[0, :, 0]
        xs = ox.view(1, -1, 1) + self.local[1, :, 0]
        ys, xs = torch.broadcast_tensors(ys, xs)
        valid = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
        # (3, ry, rx, P, 1): position and 1, 0 on padding (which so weighs nothing)
        self.weights = torch.stack([ys * valid, xs * valid, valid.float()]).unsqueeze(-1)
        self.cells = torch.where(valid, (ys // self.bh) * self.gx + xs // self.bw, 0).long().unsqueeze(-1)

    def slots(self, padded: Tensor, out: Tensor) -> Tensor:
        """``(B, F, ry * bh, rx * bw)`` padded images -> ``(F, ry, rx, P, B)`` in ``out``."""
        b, f = padded.shape[:2]
        t = padded.view(b, f, self.ry, self.bh, self.rx, self.bw).permute(1, 2, 4, 3, 5, 0)
        out = out.view(f, self.ry, self.rx, self.bh, self.bw, b).copy_(t)
        return out.view(f, self.ry, self.rx, self.bh * self.bw, b)

    def image(self, t: Tensor, ws: Workspace) -> Tensor:
        """``(ry, rx, P, B)`` -> ``(B, H, W)`` view of a work tensor, padding dropped.

        Blocks are put in image order first (rows of ``B`` values move at once), then one
        2-D transpose brings the images outside.
        """
        b, hp, wp = t.shape[-1], self.ry * self.bh, self.rx * self.bw
        rows = t.view(self.ry, self.rx, self.bh, self.bw, b).permute(0, 2, 1, 3, 4)
        rows = ws.get("rows", (self.ry, self.bh, self.rx, self.bw, b), t.dtype).copy_(rows)
        out = ws.get("image", (b, hp * wp), t.dtype).copy_(rows.view(hp * wp, b).T).view(b, hp, wp)
        return out[:, self.top : self.top + self.h, self.left : self.left + self.w]


@functools.lru_cache(maxsize=16)
def layout(h: int, w: int, grid: tuple[int, int, int, int], device: torch.device) -> Layout:
    """The :class:`Layout` of an image size and grid, built once."""
    return Layout(h, w, grid, device)


def row_sum(t: Tensor) -> Tensor:
    """``t.movedim(0, -1).sum(-1)``, added in the order torch's CPU kernel adds a contiguous
    row of fewer than 8 numbers (four partial sums, the rest into the first, then the four
    in turn), so the result is bit for bit that row sum without building the rows."""
    f = t.shape[0]
    if f >= 8:
        return t.movedim(0, -1).contiguous().sum(-1)
    out = t[0].clone()
    for i in list(range(4, f)) + list(range(1, min(f, 4))):
        out.add_(t[i])
    return out


class Slic:
    """One batched SLIC run: the pixels' features in slots, the centres, the labels.

    A label is held as ``k * B + b`` (centre ``k`` of image ``b``), so the centres
    ``(F, K * B)`` are gathered per block as rows of ``B`` values.
    """

    def __init__(self, colour: Tensor, lay: Layout, compactness: float, ws: Workspace) -> None:
        c, b = colour.shape[0], colour.shape[-1]
        shape, n = colour.shape[1:], lay.k * b
        self.colour, self.lay, self.b, self.ws = colour, lay, b, ws
        self.scale = compactness / math.sqrt(lay.bh * lay.bw)
        self.local = lay.local * self.scale
        self.feats = self._features()
        images = torch.arange(b, device=colour.device)
        # (4, ry, rx, 1, B) candidate labels, as floats (exact) for the selection by lerp
        self.labels = (lay.candidates * b + images).to(torch.float32 if n <= 2**24 else torch.float64)
        self.index = torch.add(lay.cells * b, images, out=ws.get("index", shape, torch.int64)).view(-1)
        self.centres = colour.new_zeros(c + 2, n)
        self.sums = ws.get("sums", (self.feats.shape[0], n), self.feats.dtype)
        self.cand = ws.get("cand", (c + 2, 4 * lay.ry * lay.rx, b))
        self.square = ws.get("square", (c + 2,) + self.labels.shape)
        self.score = ws.get("score", (4,) + shape)
        self.closer = ws.get("closer", shape, self.labels.dtype)
        self.nearest = ws.get("nearest", shape, self.labels.dtype)
        self.narrow = ws.get("narrow", shape, torch.int32)

    def _features(self) -> Tensor:
        """``(m, S)``: each slot's colour, position and 1 (0 on padding), as float32 rows or,
        on CPU, in complex64 pairs (a complex scatter-add then sums two rows at once)."""
        feats = list(self.colour) + list(self.lay.weights)
        if self.colour.device.type != "cpu":
            return torch.stack([f.expand(self.colour.shape[1:]) for f in feats]).flatten(1)
        if len(feats) % 2:
            feats.append(torch.zeros_like(self.lay.weights[0]))
        shape = self.colour.shape[1:]
        out = self.ws.get("feats", (len(feats) // 2,) + shape, torch.complex64)
        for row, re, im in zip(out, feats[::2], feats[1::2]):
            torch.complex(re.expand(shape), im.expand(shape), out=row)
        return out.flatten(1)

    def update(self) -> None:
        """Centres moved to the mean (colour, position) of their pixels; empty ones stay put.

        The scatter-add adds each image's pixels in slot order (block by block).
        """
        f, n = self.centres.shape
        sums = self.sums.zero_().scatter_add_(1, self.index.expand(self.sums.shape[0], -1), self.feats)
        if sums.is_complex():
            sums = torch.view_as_real(sums).permute(0, 2, 1).reshape(2 * sums.shape[0], n)
        counts = sums[f : f + 1]
        self.centres = torch.where(counts > 0, sums[:f] / counts.clamp_min(1.0), self.centres)

    def assign(self) -> None:
        """Each pixel to the nearest of its 4 candidate centres (ties: the first).

        Squared distances up to a per-pixel constant, ``|c|^2 - 2 <f, c>``, with positions
        relative to each block's origin (small numbers, so float32 stays accurate).
        """
        lay, c = self.lay, self.colour.shape[0]
        centres = self.centres.view(self.centres.shape[0], lay.k, self.b)
        cand = torch.index_select(centres, 1, lay.candidates.view(-1), out=self.cand)
        cand = cand.view(self.square.shape)  # (F, 4, ry, rx, 1, B)
        cand[c:].sub_(lay.origin).mul_(self.scale)
        norms = row_sum(torch.mul(cand, cand, out=self.square))
        score = torch.mul(self.colour[0], cand[0], out=self.score)  # (4, ry, rx, P, B)
        for i in range(1, c):
            score.addcmul_(self.colour[i], cand[i])
        for i in range(2):
            score.addcmul_(self.local[i], cand[c + i])
        torch.add(norms, score, alpha=-2.0, out=score)
        best, closer, nearest = score[0], self.closer, self.nearest
        for j in range(1, 4):  # the last strict improvement of the running minimum
            torch.lt(score[j], best, out=closer)
            if j < 3:
                torch.minimum(best, score[j], out=best)
            if j == 1:
                torch.lerp(self.labels[0], self.labels[1], closer, out=nearest)
            else:
                nearest.lerp_(self.labels[j], closer)
        if nearest.dtype == torch.float32:  # via int32: two fast conversions
            nearest = self.narrow.copy_(nearest)
        self.index.copy_(nearest.view(-1))

    def segments(self) -> Tensor:
        """``(B, H, W)`` int64 labels ``0..n_b-1`` per image, in birth-cell order."""
        lay, shape = self.lay, self.colour.shape[1:]
        valid = self.ws.get("valid", shape).copy_(lay.weights[2].expand(shape)).view(-1)
        used = self.centres.new_zeros(lay.k * self.b).scatter_add_(0, self.index, valid) > 0
        rank = used.view(lay.k, self.b).cumsum(dim=0).sub_(1).view(-1)
        labels = lay.image(self.narrow.copy_(self.index.view(shape)), self.ws)
        return rank.index_select(0, labels.reshape(-1)).view(labels.shape)


def segment(x: Tensor, grid: tuple[int, int, int, int], compactness: float, iterations: int) -> Tensor:
    """SLIC labels ``(B, H, W)`` of float32 pixels ``x`` on the initial ``grid`` (arguments
    checked by the caller).

    On the CPU a batch whose work tensors would exceed the kept workspace
    (:data:`WORKSPACE_BYTES`, about :data:`BYTES_PER_PIXEL` per pixel: large images) is
    segmented a few images at a time (chunks of a multiple of 8 images, or of one), so that the
    workspaces are reused from call to call instead of mapped and faulted in again (each
    image's superpixels are its own; which elements take the vectorised or the scalar tail
    of the colour conversion's kernels can differ, so rare pixels may round apart).
    """
    b = x.shape[0]
    per_image = BYTES_PER_PIXEL * x.shape[1] * x.shape[2] * x.shape[3] // 3
    fits = max(1, WORKSPACE_BYTES // max(1, per_image))
    if x.device.type != "cpu" or b <= fits:
        return _segment(x, grid, compactness, iterations)
    # the images are the innermost dim of the work tensors: a chunk of a few images (not a
    # multiple of the vector width, 8 floats) runs several times slower than one of 8 or 1
    size = fits // 8 * 8 or 1
    return torch.cat([_segment(x[i : i + size], grid, compactness, iterations) for i in range(0, b, size)])


def _segment(x: Tensor, grid: tuple[int, int, int, int], compactness: float, iterations: int) -> Tensor:
    """:func:`segment` of one chunk."""
    b, c, h, w = x.shape
    lay = layout(h, w, grid, x.device)
    ws = workspace((x.shape, x.stride(), grid), x.device)
    padded = ws.get("padded", (b, c, lay.ry * lay.bh, lay.rx * lay.bw), zero=True)  # padding stays 0
    inner = padded[:, :, lay.top : lay.top + h, lay.left : lay.left + w]
    if c == 3:
        lab_into(x, inner, ws)
    else:
        torch.mul(x.clamp(0.0, 1.0), 100.0, out=inner)
    colour = lay.slots(padded, ws.get("colour", (c, lay.ry * lay.rx * lay.bh * lay.bw * b)))
    run = Slic(colour, lay, compactness, ws)
    for _ in range(iterations):
        run.update()
        run.assign()
    return run.segments()
