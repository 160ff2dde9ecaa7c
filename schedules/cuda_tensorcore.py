"""Tensor-core convolution for NVIDIA GPUs (sm_80+): an implicit GEMM on mma.sync.

The convolution is viewed as one GEMM per group (and, for the transposed form, per output phase):
``C[m, n] = sum_k A[k, m] * B[n, k]`` with ``m`` = (batch, output row, output column), ``n`` = output
channel of the group and ``k`` = (input channel of the group, kernel row, kernel column).  Nothing
is materialised: the layout transformations (``transform_block_layout`` + ``reindex``, as
MetaSchedule's tensor-core rule does) only rename the loops, and the shared-memory copies read the
input and the weight in torch's layouts, the padding (and the GEMM's own padding to whole tiles)
computed in the copy.  A is staged ``[k, m]`` (a warp reads 32 consecutive output pixels: one
coalesced row of the NCHW input; 16-byte vector loads for 1x1 layers, whose rows are runs of the
input plane), B ``[n, k]`` (torch's weight rows, 16-byte vector loads).

Per thread block: ``block_m x block_n`` outputs, ``warps_m x warps_n`` warps each owning
``frags_m x frags_n`` 16x16 float32 accumulator fragments.  The reduction runs in chunks of
``chunk_k``; per chunk the block stages A and B in shared memory (``shared.dyn``), then each warp
loads its 16x16 fragments with ``ldmatrix`` and multiplies them with two ``mma.sync.m16n8k16``
per 16x16x16 step (our intrinsics for float16 and bfloat16: ``tensor_intrinsics.py``).  A float32
request with ``tf32`` (torch's default for cuDNN convolutions; its compute rounds the products'
operands to TF32) stages float32 chunks, loads fragments per lane with ``cvt.rna.tf32.f32`` and
multiplies with four ``mma.sync.m16n8k8`` TF32 per step.

A ``stages``-deep software pipeline over the chunks is available (``Config.stages``): the
reduction loop then carries TVM's ``software_pipeline_stage/order/async_stages`` annotations, so
``InjectSoftwarePipeline`` keeps ``stages`` chunks of A and B in shared memory, the copies of chunk
``c + stages - 1`` in flight while chunk ``c`` is multiplied, and ``InjectPTXAsyncCopy``
(``tirx.use_async_copy``, set by ``targets.cuda.compile_context``) turns the copies of 4, 8 or 16
bytes into ``cp.async`` (2-byte copies, float16/bfloat16 input pixels of NCHW tensors, stay
synchronous loads).  The rule's own choice is one stage (``PIPELINE_STAGES``: measured on an H100,
the pipeline did not pay).  The CPU emulation of the tests runs the schedule without the pipeline
annotations.

The accumulators go through shared memory (float32, reusing the staging space) to the compute's
``output`` stage, inlined onto the block tile: bias, the request's epilogue (residual add,
activations) and the cast are applied there and written coalesced to NCHW.  The transposed form's
phases are interleaved by a second, elementwise kernel (as ``cuda-direct`` does).

An NCHW conv2d input that would be read a pixel per load (every layer but the 1x1, stride-1,
unpadded ones) is instead read through an NHWC copy where a group's channels fill 16-byte vectors
(``relayout_pays``, measured; ``relayout``): a transpose kernel in the same module (``_relayout``,
through a shared-memory tile) writes an ``[n, h, w, c]`` copy of the input to a workspace, the weight
is packed ``[co, kh, kw, ci]`` once per module (``weight_block``; searches and exported libraries
take torch's layout and transpose it in a second kernel), and the GEMM is the NHWC one below,
writing NCHW.  The in-place form stays a design space beside it (``alternatives``).

NHWC (channels_last tensors read and written in place, ``compiler.request.LAYOUTS``): A is staged
``[m, k]``, K ordered (kh, kw, c) or by channel blocks (``gemm_of``), so a row of A is runs of one
pixel's channels and loads 16 bytes at a time; the epilogue's threads run along N (consecutive
channels of a pixel).  The transposed form's phase GEMMs the same way (``conv`` stored ``[n, phase_h,
phase_w, q_h, q_w, co]``).

A transposed layer's weight (torch's ``[ci, co/groups, kh, kw]``: no run of a phase's K is
contiguous there) is packed once per module into its phases' GEMM rows (``weight_block``:
``compute.PhaseTaps``, K in the kernel's order, zeros for taps past the kernel's edge), so B loads 16
bytes at a time as for conv2d; searches and exported libraries take torch's layout (a tap per load).

Split-K (``Config.split_k``): where even the smallest tiles leave the GPU short of warps (small
batches of deep layers: at batch 1, Conv2d(512, 512, 3) on 7x7 is a GEMM of 49 x 512 x 4608), K is
cut into equal slices of whole chunks (``split_candidates``, ``choose_split``), each slice's GEMM
computed by blocks of its own (TVM's ``rfactor``: a grid axis more) and written, through the same
shared-memory tile, as float32 partial sums to a workspace; a second kernel adds the slices up per
output and applies what the one-kernel form applies from its accumulators (bias, epilogue, cast, the
phase interleave).  The count is a ``sample_categorical`` decision of the design space (the rule's
count its default), and the unsplit tile a design space of its own (``alternatives``).

Declines (``cuda-direct`` serves): exact float32 and float64 (the tensor cores have no such
arithmetic), architectures before sm_80, fewer than 16 channels per group on either side (depthwise layers),
GEMMs with fewer than 16 rows, and transposed layers whose stride and dilation share a factor
(phases without taps: the product is guarded, not a plain multiply-add).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import List, Optional, Tuple

from tvm import DataType, s_tir
from tvm.tirx import IndexMap

from targets.cuda import arch_number, multiprocessors, opt_in_shared_memory, with_shared_memory

from .base import GPU_THREADS, GPU_VECTOR_BYTES, ScheduleRule, bind_elementwise, has_block, largest_divisor
from .gpu_verify import first_verified, passes_gpu_verification
from .tensor_intrinsics import A_KM, A_MK, FRAGMENT_SCOPE, PTX_TYPE, STORAGE, TF32, fragment_layout, intrinsics, layouts

#: mma.sync fragments are 16x16 (TVM's intrinsics issue two m16n8k16 per 16x16x16 step)
FRAGMENT = 16
#: Lanes of a warp (ldmatrix and mma.sync are warp-wide); checked against the target's warp size.
WARP = 32
#: Elements of skew per staged row of A (``[k, m]``) and B (``[n, k]``), by element size.  16-bit rows
#: then start 16 bytes apart mod 128, so the 8 row addresses of an ldmatrix phase hit distinct bank
#: groups (as dlight's ``storage_align``).  TF32 fragments are read by each lane (g, t) = (lane // 4,
#: lane % 4) from A's row t at column g and from B's row g at column t (``tf32_layouts``): rows 8
#: words apart (A) and 4 words apart (B) put a warp's 32 reads in 32 banks.
SKEWS = {2: (8, 8), 4: (8, 4)}
#: Deepest software pipeline over the reduction chunks: 3 stages keep two chunks' copies in flight
#: behind the one being multiplied (CUTLASS's sm_80 default for 128x128 tiles is 3-4).
MAX_STAGES = 3
#: Row stride of the float32 accumulator tile in shared memory: ``1 (mod 32)`` words, so that the
#: epilogue's threads, reading down a column (consecutive pixels of one channel), hit 32 banks.
ACC_ROW_OFFSET = 1
#: Most 16x16 accumulator fragments per warp along M or N (a warp tile of up to 64 x 64)
MAX_FRAGMENTS = 4
#: Warps per SM the tile choice keeps the GPU busy with before it gives warps more fragments.
#: Measured on an H100 (examples/tensorcore_sweep.py: ResNet-50 layers, batch 32, float16, NCHW,
#: tuning_logs/cuda-sm_90/sweep-h100-20261126.json): the fastest tile of each layer gave 12-24 warps
#: per SM, and at 3-6 the deep layers ran 2-4x slower (Conv2d(512, 512, 3) on 7x7: 96x96 blocks,
#: 3 warps per SM, 0.85 ms; 64x64 blocks of 16 warps, 24 per SM, 0.22 ms; 256 on 14x14: 0.53 vs
#: 0.27 ms), while more fragments per warp won once warps were plentiful (128 on 28x28: 64x128
#: blocks at 12 per SM 0.136 ms, 32x128 at 24 per SM 0.174 ms).  16 lies between those.
OCCUPANCY_WARPS = 16
#: The same for NHWC kernels (A staged [m, k], 16-byte loads of both operands), whose fastest tiles
#: had more fragments per warp at fewer warps per SM.  Measured on an H100 (kernels alone, batch 32,
#: float16, channels_last; examples/tensorcore_sweep.py --layout NHWC --occupancies 8,4,3; data in
#: tuning_logs/cuda-sm_90/h100-nhwc-20261127/sweep-occupancies.log): at 16 the rule's tiles took 0.0467 ms on
#: Conv2d(128, 128, 3) on 28x28 (32x128 blocks), 0.067 on 256 on 14x14 (32x96), 0.099 on 512 on 7x7
#: (32x32); the tiles 4 gives within 48 KB of shared memory took 0.032 (64x128) and 0.071 (64x96),
#: and 96-row ones 0.030 and 0.038 (over 48 KB); 64 on 56x56 and the 1x1 256 -> 64 layer keep their
#: 128x64 tiles (0.040, 0.036 ms).
NHWC_OCCUPANCY_WARPS = 4
#: Chunks in flight in the hand-chosen schedule.  One: no software pipeline.  Measured on an H100
#: (same sweep), the same tile with 3 stages was 20% slower on a 1x1 layer (Conv2d(256, 64, 1):
#: 0.043 vs 0.034 ms), level on a 3x3 one (128 on 28x28), 9% faster on another (64 on 56x56); and
#: 14 of 47 pipelined 3x3 kernels (2-4 stages, chunks of 16-64, synchronous 2-byte input copies)
#: failed to launch.  Deeper pipelines stay available through ``Config.stages``.
PIPELINE_STAGES = 1
#: Largest accumulator share of a thread's registers: the rest holds the A/B fragments, addresses
#: and loop state.  ``nvcc -Xptxas -v`` (CUDA 13, no GPU needed), sm_80 and sm_90: 8-9 fragments
#: per warp (64-72 floats) used 121-138 registers, 12 (96 floats) 165-170, none spilled.
ACCUMULATOR_SHARE = 0.5
#: Most accumulator fragments per warp of a tile with A staged ``[m, k]`` before sm_90.  ptxas (CUDA 13)
#: for sm_80 gave the 96x128 NHWC tiles (2x2 warps of 3x4 fragments) of Conv2d(128, 128, 3) on
#: 32x128x28x28 and Conv2d(256, 256, 3) on 14x14 255 registers and spilled 20-64 bytes (float16,
#: bfloat16), where sm_90 used 168 and spilled nothing; the 8-fragment tiles (128x64) used 124-148
#: registers on sm_80 and spilled nothing.
SM80_MK_FRAGMENTS = 8
#: Fewest reduction elements a K slice of a split-K kernel keeps (``split_candidates``).  Each slice
#: writes its float32 partial sums to a workspace that a second kernel reads back: 8 bytes per output
#: and slice.  A 32x32 block (the smallest tile, the one an unoccupied GPU gets) stages
#: ``2 * k * (1/32 + 1/32)`` bytes of half operands per output for ``k`` reduction elements, so at 256
#: (32 bytes) the workspace adds at most a quarter to the slice's memory traffic.  From that
#: arithmetic, not measured (no GPU has run a split-K kernel yet).
MIN_SLICE_K = 256
#: Tiles its design space offers a search beside the rule's own (``alternatives``): the next ones in
#: rank order that schedule and verify.  On the H100 sweep the fastest tile of a layer ranked among
#: the first 8 of 53 in every case, and tiles of one layer differed 2-4x (same sweep).
SEARCH_TILES = 8


@dataclass(frozen=True)
class Gemm:
    """A convolution as ``batch`` independent GEMMs of ``m x n x k`` (see the module docstring)."""

    batch: int
    m: int
    n: int
    k: int


@dataclass(frozen=True)
class Config:
    warps_m: int       # warps along M (output pixels)
    warps_n: int       # warps along N (output channels)
    frags_m: int       # 16x16 accumulator fragments per warp along M
    frags_n: int       # ... along N
    chunk_k: int       # reduction staged in shared memory per step (multiple of 16)
    element_bytes: int = 2   # of the staged operands: 2 (float16, bfloat16) or 4 (float32 for TF32)
    stages: int = 1    # chunks of A and B in shared memory at once (software pipeline depth)
    input_vector: int = 1   # input elements per global load (``input_vector``; 1: a pixel each)
    a_staged: str = A_KM    # A in shared memory as [k, m] (NCHW inputs) or [m, k] (A_MK: NHWC inputs)
    split_k: int = 1   # K slices computed by separate thread blocks, summed by a second kernel
    weight_vector: Optional[int] = None   # weight elements per global load (None: ``_weight_vector``'s)

    @property
    def block_m(self) -> int:
        return self.warps_m * self.frags_m * FRAGMENT

    @property
    def block_n(self) -> int:
        return self.warps_n * self.frags_n * FRAGMENT

    @property
    def threads(self) -> int:
        return self.warps_m * self.warps_n * WARP

    @property
    def skews(self) -> Tuple[int, int]:
        """(A's, B's): an A staged ``[m, k]`` is read by the fragment loads as B ``[n, k]`` is."""
        skew_a, skew_b = SKEWS[self.element_bytes]
        return (skew_b if self.a_staged == A_MK else skew_a), skew_b

    @property
    def staged_bytes(self) -> int:
        """The A ``[chunk_k, block_m]`` (or ``[block_m, chunk_k]``) and B ``[block_n, chunk_k]``
        chunks, rows padded by ``storage_align``."""
        skew_a, skew_b = self.skews
        a_rows = self.block_m * _aligned(self.chunk_k, skew_a) if self.a_staged == A_MK \
            else self.chunk_k * _aligned(self.block_m, skew_a)
        return self.element_bytes * (a_rows + self.block_n * _aligned(self.chunk_k, skew_b))

    @property
    def accumulator_bytes(self) -> int:
        """The float32 ``[block_m, block_n]`` accumulator tile, rows padded by ``storage_align``."""
        return 4 * self.block_m * _aligned(self.block_n, ACC_ROW_OFFSET)

    def shared_bytes(self) -> int:
        """Shared memory of the kernel: the ``stages`` staged chunks, or the accumulator tile
        written back through the same space after the last chunk (TVM's
        ``MergeSharedMemoryAllocations`` reuses ``shared.dyn`` space whose lifetimes do not
        overlap; the tests compare with its result)."""
        return max(self.stages * self.staged_bytes, self.accumulator_bytes)


def pipeline_stages(config: Config, k: int, limit: int) -> int:
    """The pipeline depth for a reduction of ``k``: up to ``MAX_STAGES``, no deeper than the
    number of chunks (a chunk staged ahead must exist), and within ``limit`` bytes of shared memory."""
    chunks = -(-k // config.chunk_k)
    for stages in range(min(MAX_STAGES, chunks), 1, -1):
        if replace(config, stages=stages).shared_bytes() <= limit:
            return stages
    return 1


def _aligned(row: int, offset: int) -> int:
    """The row stride ``storage_align(factor=WARP, offset)`` gives a row of ``row`` elements: the
    smallest stride >= row that is ``offset`` modulo 32."""
    return row + (offset - row) % WARP


def _little_waste(tiles: int, warps: int, frags: int, waste: float = 1 / 8) -> bool:
    """Whether ``frags`` fragments per warp pad an axis of ``tiles`` 16-wide tiles to whole blocks
    by at most ``waste`` of the axis (one fragment is always acceptable)."""
    block = warps * frags
    return frags == 1 or -(-tiles // block) * block <= tiles * (1 + waste)


def _chunk(k: int, unpadded: bool = False) -> int:
    """K per shared stage: 2-4 mma steps (fewer barriers per multiply-add) dividing K's 16-element
    tiles if possible; one step for K <= 16 or a small K with no such divisor (no padding), else 32
    with the last chunk zero-padded.  ``unpadded`` (A staged ``[m, k]``): 3 steps too, and one step
    rather than a zero-padded chunk where K is whole tiles, because the test of K's padding differs
    from lane to lane of a channel vector and TVM's vectorizer then splits the 16-byte input loads
    into single elements (seen in the lowered kernels of Conv2d(16, 32, 3): K = 144, 9 tiles)."""
    tiles = -(-k // FRAGMENT)
    for steps in ((4, 2, 3) if unpadded else (4, 2)):
        if tiles % steps == 0:
            return steps * FRAGMENT
    return FRAGMENT if tiles < 8 or unpadded and k % FRAGMENT == 0 else 2 * FRAGMENT


def ranked_configs(gemm: Gemm, target, element_bytes: int = 2, a_staged: str = A_KM) -> List[Config]:
    """The tiles the rule may use, best first.  Up to 2x2 warps (128 threads), each with up to 4x4
    fragments (64 pixels x 64 channels) that keep within ``ACCUMULATOR_SHARE`` of the registers a
    thread may hold at this block size (target's ``registers_per_block``, at most 255 per thread; with A
    staged ``[m, k]`` before sm_90 at most ``SM80_MK_FRAGMENTS``),
    pad neither GEMM axis by more than an eighth, and fit the target's
    shared memory (``shared_memory_limit``) with operands of ``element_bytes``.  Ranked: those that give the
    GPU ``OCCUPANCY_WARPS`` warps per SM (``NHWC_OCCUPANCY_WARPS`` with A staged ``[m, k]``) first, the most fragments per warp among them (else the
    most warps per SM), more channels than pixels per warp on a tie (an A row staged serves more of
    them), then the longer chunk.  ``PIPELINE_STAGES`` stages."""
    m_tiles, n_tiles = -(-gemm.m // FRAGMENT), -(-gemm.n // FRAGMENT)
    warps_m = 2 if m_tiles >= 4 else 1
    warps_n = 2 if n_tiles >= 4 else 1
    threads = warps_m * warps_n * WARP
    registers = min(255, int(target.attrs.get("registers_per_block", 65536)) // threads)
    accumulators = int(registers * ACCUMULATOR_SHARE) // (FRAGMENT * FRAGMENT // WARP)   # fragments
    if a_staged == A_MK and arch_number(target) < 90:
        accumulators = min(accumulators, SM80_MK_FRAGMENTS)
    limit = shared_memory_limit(target, a_staged)
    longest = _chunk(gemm.k, unpadded=a_staged == A_MK)
    fitting = [Config(warps_m, warps_n, fm, fn, chunk, element_bytes, PIPELINE_STAGES, a_staged=a_staged)
               for chunk in sorted({longest, min(longest, 2 * FRAGMENT)})
               for fm in range(1, MAX_FRAGMENTS + 1) for fn in range(1, MAX_FRAGMENTS + 1)
               if fm * fn <= accumulators and _little_waste(m_tiles, warps_m, fm)
               and _little_waste(n_tiles, warps_n, fn)]
    wanted = _wanted_warps(target, a_staged)

    def rank(c: Config):
        occupied = _warps(gemm, c) >= wanted
        fragments = c.frags_m * c.frags_n
        return occupied, fragments if occupied else -fragments, c.frags_n, c.chunk_k
    return sorted((c for c in fitting if c.shared_bytes() <= limit), key=rank, reverse=True)


def _wanted_warps(target, a_staged: str) -> int:
    """Warps the GPU is kept busy with (``OCCUPANCY_WARPS`` or ``NHWC_OCCUPANCY_WARPS`` per SM)."""
    return (NHWC_OCCUPANCY_WARPS if a_staged == A_MK else OCCUPANCY_WARPS) * multiprocessors(target)


def _warps(gemm: Gemm, config: Config) -> int:
    """Warps of the whole grid: every GEMM's block tiles, times the K slices."""
    m_tiles, n_tiles = -(-gemm.m // FRAGMENT), -(-gemm.n // FRAGMENT)
    blocks = gemm.batch * -(-m_tiles // (config.warps_m * config.frags_m)) \
        * -(-n_tiles // (config.warps_n * config.frags_n))
    return blocks * config.split_k * config.warps_m * config.warps_n


def split_candidates(gemm: Gemm, config: Config, spec) -> List[int]:
    """The K slice counts a split-K kernel of ``config`` may take, 2 and up: those that divide its
    reduction chunks into equal slices (for a channel-blocked ``[m, k]`` GEMM, ``gemm_of``, its channel
    blocks, so that a slice is whole blocks of every tap) of at least ``MIN_SLICE_K`` elements."""
    chunks = -(-gemm.k // config.chunk_k)
    units = spec.in_channels // spec.groups // config.chunk_k \
        if _channel_blocked(spec, gemm, config.a_staged, config.chunk_k) else chunks
    return [s for s in range(2, units + 1) if units % s == 0 and chunks // s * config.chunk_k >= MIN_SLICE_K]


def choose_split(gemm: Gemm, config: Config, target, spec) -> int:
    """``config``'s K slices: 1 where its blocks keep the GPU busy (``_wanted_warps``), else the
    fewest of ``split_candidates`` that do, or the most there are.  Small-batch deep layers need
    them: Conv2d(512, 512, 3) on 1x512x7x7 is a GEMM of 49 x 512 x 4608, 32 blocks of 32x32 for 132
    SMs, while its K holds 72 chunks of 64."""
    wanted = _wanted_warps(target, config.a_staged)
    if _warps(gemm, config) >= wanted:
        return 1
    candidates = split_candidates(gemm, config, spec)
    enough = [s for s in candidates if _warps(gemm, replace(config, split_k=s)) >= wanted]
    return (enough or candidates or [1])[0 if enough else -1]


def shared_memory_limit(target, a_staged: str = A_KM) -> int:
    """Shared memory a tile may take: the architecture's opt-in maximum for NHWC kernels (A staged
    ``[m, k]``), whose best tiles need a little more than the 48 KiB static limit, else the target's
    ``max_shared_memory_per_block``.  Measured on an H100 (kernels alone, batch 32, float16,
    channels_last; tuning_logs/cuda-sm_90/h100-nhwc-20261127/sweep-occupancies.log): 96x128 blocks,
    whose float32 accumulator tile takes 49.5 KB, were the fastest of every tile tried on
    Conv2d(128, 128, 3) on 28x28 (0.0297 ms against 0.0322 for the best within 48 KB) and on
    Conv2d(256, 256, 3) on 14x14 (0.0376 against 0.0525), and they launched and matched torch.  NCHW
    kernels keep the static limit: no tile over it was measured there."""
    static = int(target.attrs.get("max_shared_memory_per_block", 48 * 1024))
    return opt_in_shared_memory(target) if a_staged == A_MK else static


def verifying_target(target, a_staged: str = A_KM):
    """The target TVM's GPU verifier checks a kernel against: ``target`` with the shared-memory limit
    its tiles were chosen within (:func:`shared_memory_limit`)."""
    return with_shared_memory(target, shared_memory_limit(target, a_staged))


def choose_config(gemm: Gemm, target, element_bytes: int = 2, a_staged: str = A_KM) -> Optional[Config]:
    """The first of :func:`ranked_configs` (None if nothing fits)."""
    ranked = ranked_configs(gemm, target, element_bytes, a_staged)
    return ranked[0] if ranked else None


def gemm_of(sch: s_tir.Schedule, spec, layout: str = "NCHW", chunk_k: Optional[int] = None,
            a_staged: Optional[str] = None) -> Tuple[Gemm, IndexMap]:
    """The GEMM view of the ``conv`` block: its shape and the map from the block's iterators
    (NCHW: ``(n, co, [ph, pw,] h, w, rc, rh, rw)``; NHWC: ``(n, h, w, co, rh, rw, rc)``) to
    ``(g, [ph, pw,] m, n, k)``, with K ordered as the bytes A is read from (``a_staged``, by default
    the layout's own: ``A_MK`` for NHWC): ``(c, kh, kw)`` for A staged ``[k, m]`` (an NCHW input);
    for ``[m, k]`` ``(kh, kw, c)`` (a run of K is a run of one pixel's channels, in an NHWC input
    or the NHWC copy of an NCHW one, ``relayout``), or, where a reduction
    chunk of ``chunk_k`` divides the channels of a group, ``(c // chunk_k, kh, kw, c % chunk_k)``:
    each chunk one tap's run of ``chunk_k`` channels.  TVM's vectorizer proves a channel vector's
    lanes consecutive only when the chunk's K start is a multiple of the channels' (measured on
    Conv2d(128, 128, 3) and Conv2d(256, 256, 3) on sm_90: with chunks of 32, 64 and 128 the input's
    16-byte loads were split into single elements unless the chunk was the 128 channels), and this
    order makes every chunk start so."""
    a_staged = a_staged or (A_MK if layout == "NHWC" else A_KM)
    extents = [int(iv.dom.extent) for iv in sch.get(sch.get_sblock("conv")).iter_vars]
    if layout == "NHWC":
        batch, *phases, height, width, channels, rh, rw, rc = extents
    else:
        batch, channels, *phases, height, width, rc, rh, rw = extents
    per_group = channels // spec.groups
    gemm = Gemm(spec.groups * math.prod(phases), batch * height * width, per_group, rc * rh * rw)
    block = chunk_k if _channel_blocked(spec, gemm, a_staged, chunk_k) else rc

    def to_gemm(n, co, *rest):
        *phase, h, w, c, r, s = rest
        return (co // per_group, *phase, (n * height + h) * width + w, co % per_group, (c * rh + r) * rw + s)

    def nhwc_to_gemm(n, h, w, co, r, s, c):
        k = ((c // block) * rh * rw + r * rw + s) * block + c % block
        return (co // per_group, (n * height + h) * width + w, co % per_group, k)

    def nhwc_phases_to_gemm(n, ph, pw, h, w, co, r, s, c):      # the transposed form's
        g, m, n_, k = nhwc_to_gemm(n, h, w, co, r, s, c)
        return (g, ph, pw, m, n_, k)

    def nchw_channels_inner(n, co, h, w, c, r, s):              # an NCHW conv read through ``relayout``
        return nhwc_to_gemm(n, h, w, co, r, s, c)

    if layout == "NHWC":
        mapping = nhwc_phases_to_gemm if phases else nhwc_to_gemm
    else:
        mapping = nchw_channels_inner if a_staged == A_MK else to_gemm
    return gemm, IndexMap.from_func(mapping, ndim=len(extents), index_dtype="int32")


def _channel_blocked(spec, gemm: Gemm, a_staged: str, chunk_k: Optional[int]) -> bool:
    """Whether a GEMM with A staged ``[m, k]`` orders K by blocks of ``chunk_k`` channels (``gemm_of``):
    where the GEMM has several taps (a transposed layer's: one phase's) and a chunk divides a group's
    channels and is fewer than them (otherwise the order is the same as ``(kh, kw, c)``)."""
    per_group = spec.in_channels // spec.groups
    return a_staged == A_MK and bool(chunk_k) and _taps(spec, gemm) > 1 and per_group % chunk_k == 0 \
        and chunk_k < per_group


def _taps(spec, gemm: Gemm) -> int:
    """Kernel taps one output of ``gemm`` reduces over: its K is they times a group's input channels."""
    return gemm.k // (spec.in_channels // spec.groups)


def a_staging(workload) -> str:
    """How the rule stages A for ``workload``: ``[m, k]`` for NHWC inputs and for the NCHW inputs of
    layers that :func:`relayout_pays` for (read through an NHWC copy, ``relayout``), else ``[k, m]``."""
    return A_MK if workload.layout == "NHWC" or relayout_pays(workload) else A_KM


def relayout_pays(workload) -> bool:
    """Whether the rule reads an NCHW conv2d input through an NHWC copy made by a transpose kernel
    (``relayout``) rather than in place: where in place it would read a pixel per load (every layer
    but the 1x1, stride-1, unpadded ones, whose rows of A are runs of the input plane: 16-byte loads,
    ``input_vector``) and the NHWC copy's channel runs are whole 16-byte vectors that TVM can prove
    so: a group's input channels in whole 16-element mma steps (24 channels, a K of 216 for a 3x3
    layer, pad K to whole steps, and that padding's test, differing from lane to lane of a vector,
    made TVM read the copy an element at a time: ``_chunk``).

    Measured on an H100 (kernels alone, float16, batch 32, ResNet-50's layers; NCHW:
    tuning_logs/cuda-sm_90/sweep-h100-20261126.json, NHWC: h100-nhwc-20261127/sweep-occupancies.log),
    the best NHWC kernels of the 3x3 layers took 0.030-0.062 ms against 0.136-0.270 ms for the best
    NCHW ones (Conv2d(128, 128, 3) on 28x28: 0.030 against 0.136), while the 1x1 layers were level
    (Conv2d(256, 64, 1): 0.0355 against 0.0341; Conv2d(1024, 256, 1): 0.028 against 0.025).  The
    copies cost a read and a write of the input and the weight (Conv2d(64, 64, 3) on 32x64x56x56, the
    largest input: 26 MB, about 10 us at the H100's 3 TB/s; arithmetic, not measured), so the 3x3
    layers gain 2-4x.  A search measures both ways per layer (``CudaTensorCore.alternatives``).
    Transposed layers stay in place (their NHWC phase GEMMs were no faster, layout probe of
    h100-nhwc-20261127)."""
    spec = workload.spec
    if workload.layout != "NCHW" or spec.transposed:
        return False
    pixel_runs = tuple(spec.kernel_size) == (1, 1) and tuple(spec.stride) == (1, 1) and not any(spec.pads)
    return not pixel_runs and spec.in_channels // spec.groups % FRAGMENT == 0


def relayout(workload, config: Config) -> bool:
    """Whether ``config`` reads ``workload``'s NCHW input (and a torch-layout weight) through NHWC
    copies: A staged ``[m, k]`` from an NCHW conv2d (see ``relayout_pays``)."""
    if workload.layout != "NCHW" or config.a_staged != A_MK:
        return False
    if workload.spec.transposed:
        raise ValueError("a transposed layer's NCHW input is read in place (A staged [k, m])")
    return True


def _swap_last(ndim: int) -> IndexMap:
    return IndexMap.from_func(lambda *i: (*i[:-2], i[-1], i[-2]), ndim=ndim, index_dtype="int32")


def _fragment_map(ndim: int, layout=fragment_layout) -> IndexMap:
    """``[..., r, c]`` -> ``[..., r/16, c/16, lane, element]``: the mma fragment ``layout`` per 16x16 tile."""
    return IndexMap.from_func(lambda *i: (*i[:-2], i[-2] // FRAGMENT, i[-1] // FRAGMENT,
                                          *layout(i[-2] % FRAGMENT, i[-1] % FRAGMENT)),
                              ndim=ndim, index_dtype="int32")


def operand_type(workload) -> Optional[str]:
    """The mma operands of ``workload``: its half type, ``TF32`` for a float32 request that allows
    TF32, None for anything else (exact float32 and float64 stay off the tensor cores)."""
    if workload.tf32:
        return TF32 if workload.dtype == "float32" else None
    return workload.dtype if workload.dtype in PTX_TYPE else None


def _element_bytes(workload) -> int:
    """Bytes of one staged operand element: TF32 operands are stored as float32, the half types as such."""
    return 4 if STORAGE[operand_type(workload)] == "float32" else 2


def _ndim(sch: s_tir.Schedule, block, kind: str) -> int:
    regions = sch.get(block).writes if kind == "write" else sch.get(block).reads
    return len(regions[0].region)


class CudaTensorCore(ScheduleRule):
    name = "cuda-tensorcore"
    #: 2: TF32 operands, the cp.async software pipeline; 3: 1x1 input vectors, tiles by occupancy, no
    #: pipeline; 4: NHWC tiles within the architecture's opt-in shared memory (``shared_memory_limit``);
    #: 5: split-K where the blocks leave the GPU idle (``choose_split``); transposed layers in NHWC, their
    #: weight packed per phase on the module path (``weight_block``); 6: NCHW conv2d inputs read through
    #: an NHWC copy where that pays (``relayout_pays``; the weight packed for it on the module path),
    #: the in-place way a design space beside it; ``[m, k]`` tiles before sm_90 within
    #: ``SM80_MK_FRAGMENTS``; a weight TVM would gather read an element at a time
    version = 6
    layouts = ("NCHW", "NHWC")

    def apply(self, func, workload, target):
        made = self.tile_and_schedule(func, workload, target)
        return None if made is None else made[1]

    def weight_block(self, workload, target):
        """A transposed layer's weight packed per output phase (``compute.PhaseTaps``): each phase's
        GEMM rows contiguous in K, so B loads 16 bytes at a time as conv2d's torch-layout weight does.
        An NCHW conv2d read through an NHWC copy (``relayout_pays``): its weight packed ``[co, kh, kw,
        ci/groups]`` once per module (``compute.ChannelsLastWeight``) instead of transposed at every
        call (except where the two layouts have one shape, ci/groups = kh = kw: nothing would tell
        them apart, ``_ohwi_weight``)."""
        from compiler.compute import ChannelsLastWeight, PhaseTaps
        if not self.takes(workload, target):
            return None
        spec = workload.spec
        if spec.transposed:
            return PhaseTaps(workload.layout)
        co, cpg, kh, kw = spec.weight_shape
        return ChannelsLastWeight() if relayout_pays(workload) and (co, kh, kw, cpg) != spec.weight_shape else None

    def takes(self, workload, target) -> bool:
        """sm_80+ with 32-lane warps, tensor-core operands (``operand_type``), 16+ channels per group
        on both sides (depthwise and few-channel layers are mostly padding), and for the transposed
        form phases that all have taps."""
        if not super().takes(workload, target) or str(target.kind.name) != "cuda" or arch_number(target) < 80:
            return False
        if operand_type(workload) is None or int(target.attrs.get("thread_warp_size", WARP)) != WARP:
            return False
        spec = workload.spec
        if min(spec.in_channels, spec.out_channels) // spec.groups < FRAGMENT:
            return False
        return not (spec.transposed and any(math.gcd(s, d) > 1 for s, d in zip(spec.stride, spec.dilation)))

    def tile_and_schedule(self, func, workload, target) -> Optional[Tuple[Config, s_tir.Schedule]]:
        """The rule's tile for ``workload`` on ``target`` and the schedule it makes (None where the
        rule declines): the first tile, in rank order, that TVM schedules (the transposed form's
        phase interleave cannot be inlined over some GEMM paddings) and that passes its GPU verifier."""
        if not self.takes(workload, target):
            return None
        spec = workload.spec
        gemm, _ = gemm_of(s_tir.Schedule(func), spec, workload.layout)
        if gemm.m < FRAGMENT:
            return None
        ranked = ranked_configs(gemm, target, _element_bytes(workload), a_staging(workload))
        following = dict(zip(ranked, ranked[1:]))
        made = {}

        def attempt(config: Config) -> s_tir.Schedule:
            made["tile"], sch = self.schedule_contiguous(func, workload, completed(config, gemm, workload, target))
            return sch
        sch = first_verified(ranked[0] if ranked else None, attempt, following.get,
                             verifying_target(target, a_staging(workload)))
        return None if sch is None else (made["tile"], sch)

    def alternatives(self, func, workload, target) -> List[s_tir.Schedule]:
        """Up to ``SEARCH_TILES`` - 1 schedules that TVM schedules and verifies beside the rule's own:
        a split-K choice's tile unsplit, the rule's tile with the deepest software pipeline that fits
        (``pipeline_stages``), for an NCHW conv2d the first tile of the other way to read the input
        (in place, or through an NHWC copy: ``relayout_pays``' choice, measured per layer), then the
        next tiles in rank order.  The staging, the tile, the split and the pipeline depth as design
        spaces of their own (a search measures each; no trace of this rule can carry them as sampled
        decisions, since the vector widths, fragment layouts, transpose kernels and multi-buffered
        shared memory they imply are chosen in Python)."""
        made = self.tile_and_schedule(func, workload, target)
        if made is None:
            return []
        chosen, _ = made
        spec = workload.spec
        gemm, _ = gemm_of(s_tir.Schedule(func), spec, workload.layout)
        ranked = ranked_configs(gemm, target, _element_bytes(workload), a_staging(workload))
        found: List[s_tir.Schedule] = []
        restaged = []
        if workload.layout == "NCHW" and not spec.transposed:
            other = ranked_configs(gemm, target, _element_bytes(workload), A_KM if chosen.a_staged == A_MK else A_MK)
            restaged = [completed(c, gemm, workload, target) for c in other[:1]]
        # a split-K choice's tile without the split first: whether the second kernel pays is measured
        unsplit = [replace(chosen, split_k=1)] if chosen.split_k > 1 else []
        stages = pipeline_stages(chosen, gemm.k // chosen.split_k, shared_memory_limit(target, chosen.a_staged))
        pipelined = [replace(chosen, stages=stages)] if stages > chosen.stages else []
        for config in unsplit + pipelined + restaged + [completed(c, gemm, workload, target) for c in ranked]:
            if len(found) == SEARCH_TILES - 1:
                break
            if replace(config, input_vector=1, weight_vector=None) == replace(chosen, input_vector=1, weight_vector=None):
                continue                 # the rule's own tile (its vectors set by schedule_contiguous)
            try:
                _, sch = self.schedule_contiguous(func, workload, config)
            except s_tir.ScheduleError:
                continue
            if passes_gpu_verification(sch.mod, verifying_target(target, config.a_staged)):
                found.append(sch)
        return found

    @classmethod
    def schedule_contiguous(cls, func, workload, config: Config) -> Tuple[Config, s_tir.Schedule]:
        """(tile, schedule) for ``config``: as it is, or without input (or weight) vectors where TVM's
        vectorizer could not prove a vector's elements consecutive (it then gathers them, and nvcc
        rejects the 8-half ``make_uint4`` the CUDA codegen writes for that: the weight of
        Conv2d(128, 128, 3) at batch 1, read in place in NCHW with K split in 3, was such a gather)."""
        sch = cls.schedule(func, workload, config)
        copied = relayout(workload, config)
        fixed = config
        if config.input_vector > 1 and gathers(sch.mod, RELAYOUT_INPUT if copied else "input"):
            fixed = replace(fixed, input_vector=1)
        weight = "weight_global" if copied and not _ohwi_weight(func, workload.spec) else "weight"
        if config.weight_vector != 1 and gathers(sch.mod, weight):
            fixed = replace(fixed, weight_vector=1)        # (split K of an NCHW weight read in place)
        return (config, sch) if fixed == config else (fixed, cls.schedule(func, workload, fixed))

    @staticmethod
    def schedule(func, workload, config: Config) -> s_tir.Schedule:
        """The tensor-core schedule of ``func`` with ``config``.  Every ``tensorize`` comes last, so
        the trace without them is the same kernel with the intrinsics' scalar descriptions (what
        the CPU emulation in the tests runs)."""
        sch = s_tir.Schedule(func)
        spec = workload.spec
        operands = operand_type(workload)
        names = intrinsics(operands, config.a_staged)
        conv = sch.get_sblock("conv")
        # Step 1. View the convolution as batched GEMMs C[.., m, n] += A[.., k, m] * B[.., n, k]:
        # rename the block's loops, give each operand a buffer indexed by them (the reindex blocks
        # are inlined into the shared copies below), store A as [k, m] (NCHW: a row of A one channel's
        # pixels) or leave it [m, k] (NHWC: a row one pixel's taps, channels innermost).
        gemm, to_gemm = gemm_of(sch, spec, workload.layout, config.chunk_k, config.a_staged)
        sch.transform_block_layout(conv, to_gemm)
        a_view = sch.reindex(conv, ("read", 0))
        sch.reindex(conv, ("read", 1))
        sch.reindex(conv, ("write", 0))
        if config.a_staged == A_KM:
            sch.transform_layout(a_view, ("write", 0), _swap_last(_ndim(sch, a_view, "write")))
        # Step 2. Pad M, N and K to whole block tiles and chunks: the copies read zeros there and
        # the write-back skips the padding.
        sch.pad_einsum(conv, [1] * (len(sch.get_loops(conv)) - 3) + [config.block_m, config.block_n,
                                                                    config.chunk_k])
        slices = []
        if config.split_k > 1:
            # Step 2b. Split-K: the GEMM of each K slice (``rfactor``) is what the tiles below compute,
            # their partial sums staged in shared memory and written to a float32 workspace.
            conv, epilogue = _split_reduction(sch, conv, config, split_candidates(gemm, config, spec),
                                              workload.layout)
            *batch, m, n, slice_, k = sch.get_loops(conv)
            sch.reorder(slice_, *batch, m, n)
            slices = [slice_]
        else:
            epilogue = _epilogue(sch, spec)
            *batch, m, n, k = sch.get_loops(conv)
        # Step 3. Tile: fragments of 16x16x16 (blockized for the intrinsics), warps, thread blocks.
        m, m_frag = sch.split(m, [None, FRAGMENT])
        n, n_frag = sch.split(n, [None, FRAGMENT])
        k, k_frag = sch.split(k, [None, FRAGMENT])
        sch.reorder(m, n, k, m_frag, n_frag, k_frag)
        tile = sch.blockize(m_frag)
        m_block, m_warp, m_inner = sch.split(m, [None, config.warps_m, config.frags_m])
        n_block, n_warp, n_inner = sch.split(n, [None, config.warps_n, config.frags_n])
        k_chunk, k_step = sch.split(k, [None, config.chunk_k // FRAGMENT])
        group, *phases = batch
        k_outer = []
        if _channel_blocked(spec, gemm, config.a_staged, config.chunk_k):
            # chunks in (channel block, tap) order (``gemm_of``): the tap a loop of its own, so that
            # the input's index is the tap's offset plus the chunk's channels, plainly consecutive
            k_block, k_chunk = sch.split(k_chunk, [None, _taps(spec, gemm)])
            k_outer = [k_block]
        sch.reorder(*phases, *slices, group, m_block, n_block, m_warp, n_warp, *k_outer, k_chunk, k_step,
                    m_inner, n_inner)
        grid = sch.fuse(*slices, group, m_block, n_block)  # neighbouring blocks share their A rows
        warp = sch.fuse(m_warp, n_warp)
        sch.bind(grid, "blockIdx.x")
        # The transposed form's phases get grid axes of their own: fused, TVM's region analysis
        # mis-derives the taps a phase stages (as in cuda-direct; the emulation test catches it).
        for phase, axis in zip(phases, ("blockIdx.y", "blockIdx.z")):
            sch.bind(phase, axis)
        sch.bind(warp, "threadIdx.y")
        # Step 4. Stage A and B chunks in shared memory with all threads; the reindex, GEMM padding
        # and convolution padding blocks are inlined into these copies.
        warps = config.warps_m * config.warps_n
        skew_a, skew_b = config.skews
        a_shared = _stage(sch, tile, 0, k_chunk, warps, vector=config.input_vector, skew=skew_a)
        weight_vector = config.weight_vector or _weight_vector(spec, gemm, config, _phase_packed(func))
        b_shared = _stage(sch, tile, 1, k_chunk, warps, vector=weight_vector, skew=skew_b)
        for shared in (a_shared, b_shared):
            _inline_producers(sch, shared)
        if relayout(workload, config):
            # Step 4b. An NCHW input (and torch's weight) read through NHWC copies, each made by a
            # transpose kernel of its own before the GEMM's: a row of A is then runs of channels.
            for shared in (a_shared, b_shared) if not _ohwi_weight(func, spec) else (a_shared,):
                _relayout(sch, shared)
        # Step 5. Warp fragments: loaded per mma step, accumulated in registers, written back to a
        # float32 tile in shared memory (reusing the staging space), from which the epilogue reads.
        a_frag = sch.cache_read(tile, 0, FRAGMENT_SCOPE)
        b_frag = sch.cache_read(tile, 1, FRAGMENT_SCOPE)
        sch.compute_at(a_frag, k_step)
        sch.compute_at(b_frag, k_step)
        acc = sch.cache_write(tile, 0, FRAGMENT_SCOPE)
        sch.set_scope(acc, 0, "shared.dyn")
        sch.reverse_compute_at(acc, warp)
        sch.reverse_compute_at(epilogue, grid)
        loads = [_split_fragments(sch, block) for block in (a_frag, b_frag)]
        store = sch.blockize(_split_fragments(sch, acc))
        sch.storage_align(store, 0, axis=-2, factor=WARP, offset=ACC_ROW_OFFSET)
        init = sch.decompose_reduction(tile, (k_outer or [k_chunk])[0])
        if config.stages > 1:
            # the reduction loop's body: copy A, copy B, multiply (the k_step loop)
            sch.annotate(k_chunk, "software_pipeline_stage", [0, 0, config.stages - 1])
            sch.annotate(k_chunk, "software_pipeline_order", [0, 1, 2])
            sch.annotate(k_chunk, "software_pipeline_async_stages", [0])
        a_layout, b_layout = layouts(operands, config.a_staged)
        for block, kind, layout in ((a_frag, "write", a_layout), (b_frag, "write", b_layout),
                                    (acc, "read", fragment_layout)):
            sch.transform_layout(block, (kind, 0), _fragment_map(_ndim(sch, block, kind), layout))
        for loop in (m_inner, n_inner, *sch.get_loops(init)[-2:]):
            sch.unroll(loop)
        # Step 6. The epilogue: bias, residual, activations and cast per output, threads along M
        # (consecutive pixels of one channel: coalesced NCHW stores) or, NHWC, along N (consecutive
        # channels of one pixel).
        e_m, e_n = sch.get_loops(epilogue)[-2:]
        if workload.layout == "NCHW":
            sch.reorder(e_n, e_m)
            e_m, e_n = e_n, e_m
        _, e_warp, e_lane = sch.split(sch.fuse(e_m, e_n), [None, warps, WARP])
        sch.bind(e_warp, "threadIdx.y")
        sch.bind(e_lane, "threadIdx.x")
        if config.split_k > 1:
            _slice_sum_kernel(sch, spec)
        elif spec.transposed:
            _interleave_kernel(sch)
        # Step 7. Tensorize: ldmatrix, mma.sync, zero fill, fragment store.
        inner_init = sch.get(conv).name_hint + "_init"       # "conv_init", or split-K's "conv_rf_init"
        sch.tensorize(loads[0], names["load_a"])
        sch.tensorize(loads[1], names["load_b"])
        sch.tensorize(sch.get_loops(conv)[-3], names["compute"])
        sch.tensorize(sch.get_loops(sch.get_sblock(inner_init))[-2], names["init"])
        sch.tensorize(store, names["store"])
        return sch


def completed(config: Config, gemm: Gemm, workload, target) -> Config:
    """A ranked tile with what follows from it for ``workload``: its input vector and its K slices."""
    config = replace(config, input_vector=input_vector(workload, config))
    return replace(config, split_k=choose_split(gemm, config, target, workload.spec))


def _epilogue(sch: s_tir.Schedule, spec):
    """The block that reads the accumulators, in GEMM coordinates: for conv2d the ``output`` stage
    (bias, epilogue steps, cast) inlined into the write-back of the GEMM view; for the transposed
    form the write-back into the phase-major ``conv`` buffer."""
    if not spec.transposed:
        sch.reverse_compute_inline(sch.get_sblock("output"))
    if has_block(sch, "conv_reindex_pad"):
        sch.reverse_compute_inline(sch.get_sblock("conv_reindex"))
        return sch.get_sblock("conv_reindex_pad")
    return sch.get_sblock("conv_reindex")


def _split_reduction(sch: s_tir.Schedule, conv, config: Config, candidates: List[int], layout: str):
    """Split the GEMM's K into ``config.split_k`` slices, a sampled decision over ``candidates``
    (``split_candidates``; the rule's count its default), and make each slice's GEMM a block of its
    own (``rfactor``), writing ``[slice, group, (phase,) m, n]`` partial sums.  Those go through
    shared memory (where the accumulator fragments are written back, as without split-K) to a
    float32 workspace, ``[.., n, m]`` for NCHW outputs (whose copy threads run along M).  Returns (the
    slices' GEMM block, the copy into the workspace)."""
    if config.split_k not in candidates:
        raise ValueError(f"{config.split_k} K slices are none of this GEMM's {candidates}")
    count = sch.sample_categorical(candidates, [1 / len(candidates)] * len(candidates),
                                   decision=candidates.index(config.split_k))
    slices, _ = sch.split(sch.get_loops(conv)[-1], [count, None])
    partial = sch.rfactor(slices, factor_axis=0)
    to_workspace = sch.cache_write(partial, 0, "shared.dyn")
    if layout == "NCHW":
        sch.transform_layout(to_workspace, ("write", 0), _swap_last(_ndim(sch, to_workspace, "write")))
    return partial, to_workspace


def _slice_sum_kernel(sch: s_tir.Schedule, spec) -> None:
    """Split-K's second kernel: per output element, the sum of the slices' partial sums, then what
    the one-kernel form writes from its accumulators (un-padding, the transposed form's phase
    interleave, bias, epilogue, cast); an elementwise kernel along the output's innermost axis (the
    workspace's too)."""
    for name in ("conv_reindex_pad", "conv_reindex", "interleave"):
        if has_block(sch, name):
            sch.compute_inline(sch.get_sblock(name))
    threads = bind_elementwise(sch, sch.get_sblock("output"))
    total = sch.get_sblock("conv")
    sch.compute_at(total, threads)
    sch.set_scope(total, 0, "local")       # each thread's sum in a register


def _weight_vector(spec, gemm: Gemm, config: Config, packed: bool = False) -> int:
    """Elements per vector load of the weight: ``GPU_VECTOR_BYTES`` when every row of K starts aligned,
    else the widest power of two that keeps them aligned.  A transposed layer's weight only when
    ``packed`` per phase (``compute.PhaseTaps``; torch's ``[ci, co, kh, kw]`` has no run of K)."""
    if spec.transposed and not packed:
        return 1
    lanes = GPU_VECTOR_BYTES // config.element_bytes
    while lanes > 1 and (gemm.k % lanes or config.chunk_k % lanes):
        lanes //= 2
    return lanes


def _ohwi_weight(func, spec) -> bool:
    """Whether ``func`` takes a conv2d weight packed ``[co, kh, kw, ci/groups]`` (``weight_block``'s
    ``compute.ChannelsLastWeight``, whose shape differs from torch's)."""
    co, cpg, kh, kw = spec.weight_shape
    shape = tuple(int(d) for d in func.params[1].shape)
    return not spec.transposed and shape == (co, kh, kw, cpg) != tuple(spec.weight_shape)


def _phase_packed(func) -> bool:
    """Whether ``func`` takes a transposed layer's weight packed per phase (``compute.PhaseTaps``:
    ``[sh, sw, groups, co/groups, K...]``, 7 axes against torch's 4)."""
    return len(func.params[1].shape) == 7


def input_vector(workload, config: Config) -> int:
    """Elements per vector load of the input.  NHWC: a row of A (``[m, k]``) holds one output
    pixel's taps, each a run of the pixel's input channels, so ``GPU_VECTOR_BYTES`` loads wherever the
    channels of a group and the chunk are whole vectors (a vector then never spans two taps, and the
    padding's test is the same for its lanes).  NCHW: a row (``[k, m]``) holds one input channel at
    consecutive output pixels; for a 1x1, stride-1, unpadded layer those are consecutive elements of
    the channel's NCHW plane, so ``GPU_VECTOR_BYTES`` loads (``cp.async`` 16 bytes) when the plane
    and the block's pixels are whole vectors (a vector then never spans two images or the GEMM's
    padding); every other layer reads a tap per element (its padding or stride breaks the run)."""
    spec = workload.spec
    lanes = GPU_VECTOR_BYTES // config.element_bytes
    if config.a_staged == A_MK:
        per_group = spec.in_channels // spec.groups
        while lanes > 1 and (per_group % lanes or config.chunk_k % lanes):
            lanes //= 2
        return lanes
    if spec.transposed or tuple(spec.kernel_size) != (1, 1) or tuple(spec.stride) != (1, 1) or any(spec.pads):
        return 1
    plane = workload.input_shape[2] * workload.input_shape[3]
    while lanes > 1 and (plane % lanes or config.block_m % lanes):
        lanes //= 2
    return lanes


def gathers(mod, buffer: str) -> bool:
    """Whether ``mod``, lowered as ``tvm.compile`` lowers it up to vectorization, reads ``buffer`` in
    vectors whose lanes are not consecutive (a gather, not a ``Ramp`` index)."""
    import tvm
    from tvm import tirx
    st, tt = s_tir.transform, tirx.transform
    lowering = tvm.transform.Sequential([      # s_tir.pipeline's lowering to vectors, simplified
        st.CanonicalizeLoop(), st.LowerCrossThreadReduction(), st.LowerInitBlock(),
        st.PlanAndUpdateBufferAllocationLocation(), st.ConvertBlocksToOpaque(), st.LiftThreadBinding(),
        st.ManifestSharedMemoryLocalStage(), st.CompactBufferAllocation(), st.LowerAutoCopy(),
        st.UnifyThreadBinding(), st.LowerMatchBuffer(), st.StmtSimplify(), st.InjectPermutedLayout(),
        st.AnnotateIrregularLoop(), st.InjectSoftwarePipeline(), st.TransformMmaBufferLayout(),
        st.LowerOpaqueBlock(), tt.FlattenBuffer(), tt.BF16ComputeLegalize(), tt.NarrowDataType(32),
        st.LoopPartition(), tt.VectorizeLoop(True), tt.StmtSimplify()])
    text = lowering(mod).script()
    for start in (m.end() for m in re.finditer(rf"\b{buffer}(_\d+)?\[", text)):
        index = _bracketed(text, start)
        if ("T.Ramp(" in index or "T.Broadcast(" in index) and not _is_ramp(index):
            return True
    return False


def _bracketed(text: str, start: int) -> str:
    """The text from ``start`` to the bracket that closes the one just before it."""
    depth = 1
    for i in range(start, len(text)):
        depth += {"[": 1, "(": 1, "]": -1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i]
    return text[start:]


def _is_ramp(index: str) -> bool:
    """Whether a printed index is one ``T.Ramp(base, 1, lanes)``: consecutive elements."""
    return index.startswith("T.Ramp(") and _bracketed(index, len("T.Ramp(")) == index[len("T.Ramp("):-1] \
        and re.search(r", 1, \d+\)$", index) is not None


def _stage(sch: s_tir.Schedule, tile, operand: int, k_chunk, warps: int, vector: int, skew: int):
    """Copy operand ``operand`` of ``tile`` into shared memory per reduction chunk, all threads
    taking ``vector`` consecutive elements of the innermost axis in turn; rows ``skew`` apart
    modulo 32 elements (``SKEWS``)."""
    block = sch.cache_read(tile, operand, "shared.dyn")
    sch.compute_at(block, k_chunk)
    loops = sch.get_loops(block)
    depth = [i for i, loop in enumerate(loops) if sch.get(loop).same_as(sch.get(k_chunk))][0]
    *outer, inner = loops[depth + 1:]
    # the vector is split off the contiguous axis first, so that its lanes are visibly consecutive
    # (fused first, TVM's vectorizer could not see that 8 lanes of ``f % 48`` are a ramp and
    # emitted an 8-element ``make_uint4`` nvcc rejects)
    inner, vec = sch.split(inner, [None, vector])
    fused = sch.fuse(*outer, inner)
    _, ty, tx = sch.split(fused, [None, warps, WARP])
    sch.bind(ty, "threadIdx.y")
    sch.bind(tx, "threadIdx.x")
    sch.vectorize(vec)
    sch.storage_align(block, 0, axis=-2, factor=WARP, offset=skew)
    return block


#: The NHWC copy of an NCHW input that a ``relayout`` kernel reads (TVM's name for ``input``'s
#: ``cache_read`` into global memory).
RELAYOUT_INPUT = "input_global"
#: A transpose kernel's tile (``_transpose_kernel``): up to 32 channels, so that a warp writes 32
#: consecutive channels of a pixel (64 or 128 bytes), by whole rows of up to 64 pixels, read as
#: runs of a row (a 56-wide row: 112 bytes of float16).
TRANSPOSE_CHANNELS = 32
TRANSPOSE_PIXELS = 64


def _relayout(sch: s_tir.Schedule, shared) -> None:
    """Make the shared copy ``shared`` (of an NCHW input, or of torch's ``[co, ci, kh, kw]`` weight)
    read its operand from an NHWC copy ``[a, h, w, c]`` in global memory, made by a transpose kernel
    before the GEMM's (:func:`_transpose_kernel`): K's runs of channels are then contiguous."""
    copy = sch.cache_read(shared, 0, "global")
    sch.transform_layout(copy, ("write", 0), IndexMap.from_func(lambda a, c, h, w: (a, h, w, c), index_dtype="int32"))
    _transpose_kernel(sch, copy)


def _transpose_kernel(sch: s_tir.Schedule, block) -> None:
    """``block`` (``[a, c, h, w]`` -> ``[a, h, w, c]``) as a kernel of tiles of ``TRANSPOSE_CHANNELS``
    channels x whole rows: each tile read into shared memory with the threads along the rows, and
    written out with them along the channels, so that both sides are coalesced.  The tile's channel
    rows are padded to one 4-byte word modulo 32, so the threads' reads down a column hit 32 banks."""
    a, c, h, w = sch.get_loops(block)
    channels, height, width = (int(sch.get(loop).extent) for loop in (c, h, w))
    c, c_i = sch.split(c, [None, largest_divisor(channels, TRANSPOSE_CHANNELS)])
    h, h_i = sch.split(h, [None, largest_divisor(height, TRANSPOSE_PIXELS // width)])
    sch.reorder(a, c, h, c_i, h_i, w)
    grid = sch.fuse(a, c, h)
    sch.bind(grid, "blockIdx.x")
    tile = sch.cache_read(block, 0, "shared")
    sch.compute_at(tile, grid)
    elements = math.prod(int(sch.get(loop).extent) for loop in (c_i, h_i, w))
    # threads that divide the tile: a predicated copy left TVM unable to prove that it covers what
    # the write-out reads, and it refused later steps at the root (split-K's compute_inline)
    threads = largest_divisor(elements, GPU_THREADS)
    for loops in (sch.get_loops(tile)[1:], (h_i, w, c_i)):
        sch.reorder(*loops)
        _, lane = sch.split(sch.fuse(*loops), [None, threads])
        sch.bind(lane, "threadIdx.x")
    word = max(1, 32 // DataType(sch.get(block).writes[0].source.dtype).bits)   # elements per 4-byte word
    sch.storage_align(tile, 0, axis=1, factor=WARP * word, offset=word)


def _inline_producers(sch: s_tir.Schedule, block) -> None:
    """Inline every stage that feeds ``block`` (views, GEMM padding, convolution padding)."""
    producers = sch.get_producers(block)
    while producers:
        for producer in producers:
            sch.compute_inline(producer)
        producers = sch.get_producers(block)


def _split_fragments(sch: s_tir.Schedule, block):
    """Split the last two loops of ``block`` into 16x16 tiles, the loops over tiles unrolled
    (fragments are registers: indexed by a loop variable they would go to local memory); the first
    loop inside a tile."""
    i, j = sch.get_loops(block)[-2:]
    i_outer, i_inner = sch.split(i, [None, FRAGMENT])
    j_outer, j_inner = sch.split(j, [None, FRAGMENT])
    sch.reorder(i_outer, j_outer, i_inner, j_inner)
    sch.unroll(i_outer)
    sch.unroll(j_outer)
    return i_inner


def _interleave_kernel(sch: s_tir.Schedule) -> None:
    """The transposed form's ``output`` (phases interleaved back into NCHW, bias, epilogue, cast):
    its own elementwise kernel."""
    sch.compute_inline(sch.get_sblock("interleave"))
    bind_elementwise(sch, sch.get_sblock("output"))


__all__ = ["CudaTensorCore", "Config", "Gemm", "choose_config", "gemm_of", "ranked_configs"]
