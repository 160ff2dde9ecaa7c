"""Depthwise NHWC convolution for LLVM CPUs: channels_last tensors read and written in place.

A channels_last input holds each pixel's channels contiguously (ConvNeXt's blocks hand their 7x7
depthwise layers exactly that: a permuted NHWC tensor), so one vector holds ``lanes`` channels of one
pixel, and a depthwise tap is one vector multiply-add with that tap's weight vector: no gathers and
no cross-lane work, at any stride.  The NCHW rule (``cpu-depthwise``) would need the input copied to
NCHW and its output copied back to channels_last, which cost more than the convolution (measured on
znver3, 2 threads, Conv2d(96, 96, 7, padding=3, groups=96) on a channels_last 1x96x56x56: 1.10 ms a
call through the copies, 0.42 ms for the NCHW kernel alone, torch 0.81 ms).

Per task one image x one channel vector: the task pads its channels' plane into a buffer of its own
(``(H + pads) x (W + pads) x lanes``, L2-resident) and sweeps it row by row with register tiles of
``columns`` output pixels x one channel vector, the taps unrolled; the weights are pre-packed once per
module as ``[C / lanes, 1, kh, kw, lanes]`` (each tap's channel vector contiguous).
"""
from __future__ import annotations

from tvm import s_tir

from .base import CPU_UNROLL_STEPS, ScheduleRule, largest_divisor, native_lanes
from .cpu_depthwise import MAX_UNROLLED_TAPS, tasks_pad_their_planes

#: Output pixels per register tile: accumulators of one register each, with the weight vector and an
#: input vector beside them in AVX2's 16 registers (7 divides the widths of ConvNeXt's and
#: ResNet-style stages: 56, 28, 14, 7).
MAX_COLUMNS = 8


class CpuDepthwiseNhwc(ScheduleRule):
    name = "cpu-depthwise-nhwc"
    layouts = ("NHWC",)
    #: 2: the auto-unroll depth a decision (``CPU_UNROLL_STEPS``; the same kernels)
    version = 2
    unroll_steps = CPU_UNROLL_STEPS

    def weight_block(self, workload, target):
        """One register of channels (the channel vector), where the channels are whole vectors."""
        spec = workload.spec
        if str(target.kind) != "llvm" or spec.transposed or not spec.in_channels == spec.out_channels == spec.groups:
            return None
        lanes = native_lanes(workload, target)
        return lanes if spec.out_channels % lanes == 0 else None

    def takes(self, workload, target):
        return super().takes(workload, target) and self.weight_block(workload, target) is not None

    def apply(self, func, workload, target):
        lanes = self.weight_block(workload, target)
        if workload.layout != "NHWC" or lanes is None:
            return None
        sch = s_tir.Schedule(func)
        conv, out = sch.get_sblock("conv"), sch.get_sblock("output")
        if len(sch.get(conv).reads[-1].region) != 5:
            return None            # torch-layout ([c, kh, kw, 1]) weights: the rule reads packed ones only
        spec = workload.spec
        _, _, _, out_width = workload.output_shape
        columns = largest_divisor(out_width, MAX_COLUMNS)
        n, oh, ow, c, rh, rw, rc = sch.get_loops(conv)
        c_o, c_i = sch.split(c, [None, lanes])
        ow_o, ow_i = sch.split(ow, [None, columns])
        sch.reorder(n, c_o, oh, ow_o, rh, rw, rc, ow_i, c_i)
        # Step 1. One task per (image, channel vector); it pads its channels' plane into its own buffer.
        tasks_pad_their_planes(sch, n, c_o)
        # Step 2. The register tile: sums in registers, written through the epilogue when complete.
        sch.reverse_compute_at(out, ow_o, preserve_unit_loops=True)
        sch.set_scope(conv, 0, "local")
        sch.vectorize(c_i)
        sch.unroll(ow_i)
        sch.unroll(rw)
        if spec.kernel_size[0] * spec.kernel_size[1] <= MAX_UNROLLED_TAPS:
            sch.unroll(rh)
        sch.decompose_reduction(conv, rh)
        out_columns, out_channels = sch.get_loops(out)[-2:]
        sch.unroll(out_columns)
        sch.vectorize(out_channels)
        return sch
