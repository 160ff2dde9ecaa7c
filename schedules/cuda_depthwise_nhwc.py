"""Depthwise NHWC convolution for NVIDIA GPUs: channels_last tensors read and written in place, in
16-byte vectors of a pixel's channels.

A depthwise layer (MobileNet's and EfficientNet's 3x3 and 5x5 blocks) does ``kh * kw`` multiply-adds
per output and reads every input about ``kh * kw / stride^2`` times from the caches: it is bound by
memory, not arithmetic, and the tensor-core rule declines it (one channel per group).  An NCHW kernel
(``cuda-direct``) would need a channels_last input copied to NCHW and its output copied back, and it
reads a padded window's rows an element at a time (their start is not aligned).  In NHWC a pixel's
channels are contiguous, so ``lanes`` of them (16 bytes: 8 of float16 or bfloat16, 4 of float32) are
one aligned vector load at any tap, stride or padding: the half types' vectorised loads.

Per thread: one channel vector x ``columns`` output pixels of a row, the sums in float32 registers;
per tap each column's input vector and the tap's weight vector are loaded into registers (16-byte
``LDG.E.128``; neighbouring columns' taps overlap and are served by L1), the multiply-adds unrolled
per lane.  Threads run along the channel vectors (a warp reads 32 consecutive vectors of a pixel: up
to 512 contiguous bytes), then along the row's column tiles.  The weights are packed once per module
as ``[C / lanes, 1, kh, kw, lanes]`` (``weight_block``: each tap's channel vector contiguous), as for
the CPU's ``cpu-depthwise-nhwc``; torch-layout weights (searches, exported libraries) are declined,
and those requests get the NCHW kernel with copies.
"""
from __future__ import annotations

from tvm import s_tir

from .base import DTYPE_BYTES, GPU_THREADS, GPU_VECTOR_BYTES, ScheduleRule, largest_divisor

#: Most output columns per thread: each holds ``lanes`` float32 sums (8 x 8 = 64 registers for the
#: half types), beside the loaded input and weight vectors; 4 divides the widths of MobileNet's and
#: EfficientNet's stages (112, 56, 28, 14) and 7's.
MAX_COLUMNS = 4


def channel_lanes(dtype: str) -> int:
    """Channels per vector: ``GPU_VECTOR_BYTES`` of ``dtype``."""
    return GPU_VECTOR_BYTES // DTYPE_BYTES[dtype]


class CudaDepthwiseNhwc(ScheduleRule):
    name = "cuda-depthwise-nhwc"
    layouts = ("NHWC",)
    version = 1

    def weight_block(self, workload, target):
        """One vector of channels per block (``[C / lanes, 1, kh, kw, lanes]``), where the layer is
        depthwise (one channel per group, as many out as in) and its channels are whole vectors."""
        spec = workload.spec
        if str(target.kind.name) != "cuda" or spec.transposed or not spec.in_channels == spec.out_channels == spec.groups:
            return None
        lanes = channel_lanes(workload.dtype)
        return lanes if spec.out_channels % lanes == 0 else None

    def takes(self, workload, target):
        return super().takes(workload, target) and self.weight_block(workload, target) is not None

    def apply(self, func, workload, target):
        lanes = self.weight_block(workload, target)
        if workload.layout != "NHWC" or lanes is None or len(func.params[1].shape) != 5:
            return None            # torch-layout ([c, kh, kw, 1]) weights: the rule reads packed ones only
        sch = s_tir.Schedule(func)
        conv = sch.get_sblock("conv")
        _, channels, _, out_width = workload.output_shape          # (NCHW order whatever the layout)
        columns = largest_divisor(out_width, MAX_COLUMNS)
        # Step 1. Threads along the channel vectors (up to GPU_THREADS of them), then along the row's
        # tiles of ``columns`` pixels; blocks over rows, images and the rest of the vectors and tiles.
        # No loop is fused into another: a thread's registers are then indexed by constants.
        n, oh, ow, c, rh, rw, rc = sch.get_loops(conv)
        c, c_i = sch.split(c, [None, lanes])
        ow, ow_i = sch.split(ow, [None, columns])
        vectors, tiles = channels // lanes, out_width // columns
        c_b, c_t = sch.split(c, [None, largest_divisor(vectors, GPU_THREADS)])
        ow_b, ow_t = sch.split(ow, [None, largest_divisor(tiles, max(1, GPU_THREADS // min(vectors, GPU_THREADS)))])
        sch.reorder(n, oh, c_b, ow_b, ow_t, c_t, rh, rw, rc, ow_i, c_i)
        sch.bind(sch.fuse(c_b, ow_b), "blockIdx.x")
        sch.bind(oh, "blockIdx.y")
        sch.bind(n, "blockIdx.z")
        sch.bind(ow_t, "threadIdx.y")
        sch.bind(c_t, "threadIdx.x")
        # Step 2. The sums in registers, written back (bias, epilogue, cast) from them.
        acc = sch.cache_write(conv, 0, "local")
        sch.reverse_compute_inline(sch.get_sblock("output"))
        sch.reverse_compute_at(acc, c_t)
        # Step 3. Per tap, each column's input vector (the padding computed in the load: zeros past
        # the edges, no read out of bounds) and the tap's weight vector into registers, loaded 16
        # bytes at a time.
        for operand in (0, 1):
            loaded = sch.cache_read(conv, operand, "local")
            sch.compute_at(loaded, rc)
            sch.vectorize(sch.get_loops(loaded)[-1])
        if any(workload.spec.pads):
            sch.compute_inline(sch.get_sblock("pad"))
        for loop in (rh, rw, ow_i, c_i):
            sch.unroll(loop)
        sch.decompose_reduction(conv, rh)
        return sch
