"""Blocked channel-vector tiles shared by ``cpu-channel-vector`` and ``cpu-transposed-phase``.

A task owns one vector of ``V`` output channels (for every pixel of an image, or of all images and
phases of a transposed layer); its sums live channel-vector-last in a buffer of its own across the
reduction, which runs in chunks of input channels so that a chunk's packed weights stay in L1/L2
while every pixel tile of the task uses them.  A pixel tile (up to 6 pixels on AVX2, 16 on
AVX-512) x one channel vector stays in registers through a chunk, each input pixel a broadcast.

Taps that read zero padding: where they hold a good share of the multiply-adds (3x3 at dilation 24
on 32x32: 75%; the zero margins of a transposed layer on a 1x1 or 4x4 input; taps past the edge of
a kernel the stride does not divide), the padding is read through its index map instead of being
materialised, the pixel loops are split where a tap starts or stops reading the image
(``tap_ranges``, derived from the ``pad`` and ``conv`` stages themselves), the taps are unrolled,
and in each piece TVM's simplifier folds the dead taps' products to zero and drops them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from tvm import s_tir, tirx
from tvm.sym.analyzer import Analyzer

from targets.cpu import cpu_info

from .base import DTYPE_BYTES, has_block, registers_per_vector, tunable_split

#: Packed weights of one channel vector above which a layer takes the blocked tiles, whose chunks
#: reuse them from L1 (other tilings re-stream them for every pixel tile): Zen 2/3's L2 per core
#: (512 KB; Zen 4: 1 MB).  ASPP's 1.2 MB per vector ran 1.6-1.7x faster chunked on znver3
#: (338 -> 195 ms single-threaded, Conv2d(2048, 256, 3, dilation=6) on 32x32).
DEEP_WEIGHT_BYTES = 512 * 1024
#: Input channels per reduction chunk.  Measured on znver3 (single-threaded, CPU time), chunks of
#: 8-16 channels beat larger ones on every layer tried: ASPP (2048 channels, 3x3, dilation 6)
#: 105 ms vs 127 (64), 136 (256) and 204 (unchunked); 512 channels 3x3 on 28x28 21.8 vs 24.7 ms
#: unchunked; 64-256 channels 3x3 and 256 channels 1x1 on 14x14-56x56 3-8% faster.  A chunk's
#: packed weights (16 x 3x3 x 16 lanes: 9 KB) and the input planes it sweeps stay in L1/L2.
CHUNK_CHANNELS = 16
#: Bytes of a task's sums (or of a chunk's weights) that stay in cache between chunks: half of Zen
#: 2/3's 512 KB L2 (the other half: the chunk's input planes).
SUMS_BYTES = 256 * 1024
#: Share of multiply-adds reading zero padding above which the padding is not materialised and those
#: taps are dropped instead (``partition_pieces``).  Measured on znver3 (single-threaded, blocked
#: tiles with and without dropping): at 9% (3x3 padding 1 on 14x14, dilation 2 on 28x28) it was a
#: wash (5% slower, 12% faster); at 18% (3x3 on 7x7) 7% faster; ASPP's dilations 6-36 on 32x32
#: read zeros in 23-89% of them.  3x3 padding 1 on 56x56: 3.5%.
DEAD_TAP_SHARE = 0.15
#: Most taps unrolled per tile to drop dead ones (4x4 kernels: DCGAN's; 3x3: ASPP's); bigger
#: kernels keep their padding materialised.
MAX_UNROLLED_TAPS = 16
#: Most tap x pixel bodies over all the pieces that drop dead taps (pieces x taps x tile pixels),
#: for compile time: measured on a loaded znver3, 540 (ASPP dilation 6: 15 pieces x 9 taps x 4
#: pixels) compiled in 1.4 s, 640 in 2.6 s, 3920 (a 4x4 kernel at dilation 10: 49 pieces) in 6.9 s.
MAX_UNROLLED = 1024


def pixel_tile_limit(workload, target, lanes: Optional[int] = None) -> int:
    """Pixels per register tile of one channel vector: the accumulators, the weight vector and one
    broadcast input must fit the register file (AVX2: a 16-lane vector takes two of the 16
    registers, so 6 pixels = 12 accumulators), and at most half the register file's vectors
    (AVX-512: 16 pixels, the best of 7-16 measured on znver4, see ``column_tile``)."""
    registers = cpu_info(target).vector_registers
    per_vector = registers_per_vector(workload, target, lanes)
    return max(1, min(registers // 2, (registers - 1 - per_vector) // per_vector))


def tile_extent(extent: int, limit: int) -> int:
    """Tile size along an axis of ``extent``: all of it if it fits, else the largest divisor in
    [limit/2, limit] (no remainder), else ``limit`` (the remainder gets a tile of its own)."""
    if extent <= limit:
        return extent
    divisors = [t for t in range(limit, (limit + 1) // 2 - 1, -1) if extent % t == 0]
    return divisors[0] if divisors else limit


def reduction_chunk(channels: int, channel_bytes: int, sums_bytes: int) -> int:
    """Input channels per reduction chunk, whose packed weights take ``channel_bytes`` a channel,
    for a task whose sums take ``sums_bytes``: the largest divisor of ``channels`` up to
    ``CHUNK_CHANNELS`` (or, where that is tiny, a prime count of channels, the smallest above it).
    Sums outgrowing ``SUMS_BYTES`` are reloaded from memory for every chunk, so there the chunk is
    as large as ``SUMS_BYTES`` of weights allows: ConvTranspose2d(128, 64, 2, stride=2) on 64x64
    (1 MB of sums a task) ran 1.1-1.2x slower in chunks of 16 channels than in one of 128 (znver3)."""
    if sums_bytes > SUMS_BYTES:
        fitting = [d for d in range(1, channels + 1) if channels % d == 0 and d * channel_bytes <= SUMS_BYTES]
        if fitting and fitting[-1] > CHUNK_CHANNELS:
            return fitting[-1]
    below = max(d for d in range(1, min(channels, CHUNK_CHANNELS) + 1) if channels % d == 0)
    if below * 4 >= min(channels, CHUNK_CHANNELS):
        return below
    return min(d for d in range(CHUNK_CHANNELS, channels + 1) if channels % d == 0)


# ---------------------------------------------------------------------------------------------------
# Taps that read zero padding


@dataclass(frozen=True)
class TapRanges:
    """For each phase (one for conv2d) and tap of one spatial axis: the pixels ``[lo, hi)`` whose
    input through that tap lies inside the image (outside it, the tap reads zero padding), or an
    empty range where the tap's weight is the transposed compute's zero padding (``weight_pad``)."""

    pixels: int
    ranges: Tuple[Tuple[Tuple[int, int], ...], ...]      # [phase][tap] -> (lo, hi)

    def alive(self) -> int:
        """Multiply-adds (per pixel of the other axis, channel pair) that read the image."""
        return sum(max(0, hi - lo) for phase in self.ranges for lo, hi in phase)

    def total(self) -> int:
        return sum(len(phase) for phase in self.ranges) * self.pixels

    def breakpoints(self, phase: int) -> List[int]:
        """Pixels where some tap of ``phase`` starts or stops reading the image."""
        return sorted({b for lo, hi in self.ranges[phase] for b in (lo, hi) if 0 < b < self.pixels})


def _evaluate(expr, binding: Dict) -> Optional[int]:
    analyzer = Analyzer()
    for var, value in binding.items():
        analyzer.bind(var, value)
    value = analyzer.simplify(expr)
    return int(value) if isinstance(value, tirx.IntImm) else None


def _read_index(block, buffer: str, axis: int):
    return next(r for r in block.reads if r.source.name == buffer).region[axis].min


def tap_ranges(sch: s_tir.Schedule, axis: int, pixel: int, tap: int, taps: int, pixels: int,
               phase: Optional[int] = None, phases: int = 1) -> Optional[TapRanges]:
    """Which taps read the image, along spatial ``axis`` (2: rows, 3: columns), derived from the
    stages themselves: ``pad``'s window onto ``input``, the index through which ``conv`` (iteration
    variables at positions ``pixel``, ``tap``, ``phase``) reads ``pad``, and, for the transposed
    compute, whether the tap's kernel index falls past ``weight_pad``'s copy of the kernel.

    Only for zero padding (the caller's to know).  None when there is nothing to analyse (neither
    stage) or an index is not a constant for a constant phase, tap and pixel.
    """
    has_pad, weight_pad = has_block(sch, "pad"), None
    if has_block(sch, "weight_pad"):
        weight_pad = sch.get(sch.get_sblock("weight_pad"))
    if not has_pad and weight_pad is None:
        return None
    conv = sch.get(sch.get_sblock("conv"))
    top, image = 0, None                # no pad stage: every tap reads the image
    if has_pad:
        pad = sch.get(sch.get_sblock("pad"))
        image = int(next(r for r in pad.reads if r.source.name == "input").source.shape[axis])
        first = _evaluate(_read_index(pad, "input", axis), {iv.var: 0 for iv in pad.iter_vars})
        if first is None:
            return None
        top = -first                   # the padded coordinate of the image's first row / column
    variables = [iv.var for iv in conv.iter_vars]
    index = _read_index(conv, "pad", axis) if has_pad else None
    ranges = []
    for p in range(phases):
        per_tap = []
        for t in range(taps):
            binding = {v: 0 for v in variables}
            binding[variables[tap]] = t
            if phase is not None:
                binding[variables[phase]] = p
            if weight_pad is not None:      # a tap past the kernel's edge reads a zero weight
                kernel = _evaluate(_read_index(conv, "weight_pad", axis), binding)
                edge = int(next(r for r in weight_pad.reads if r.source.name == "weight").source.shape[axis])
                if kernel is None:
                    return None
                if kernel >= edge:
                    per_tap.append((0, 0))
                    continue
            if image is None:
                per_tap.append((0, pixels))
                continue
            at0 = _evaluate(index, binding)
            binding[variables[pixel]] = 1
            at1 = _evaluate(index, binding)
            if at0 is None or at1 is None or at1 - at0 < 1:
                return None
            step = at1 - at0          # pixel q reads padded row at0 + step*q: inside iff in [top, top+image)
            lo = max(0, -(-(top - at0) // step))
            hi = min(pixels, max(lo, -(-(top + image - at0) // step)))
            per_tap.append((lo, hi))
        ranges.append(tuple(per_tap))
    return TapRanges(pixels, tuple(ranges))


def dead_tap_share(rows: Optional[TapRanges], columns: Optional[TapRanges]) -> float:
    """Share of the multiply-adds that read zero padding (or zero weights)."""
    if rows is None or columns is None:
        return 0.0
    return 1.0 - rows.alive() * columns.alive() / (rows.total() * columns.total())


def tile_cuts(extent: int, tile: int, breakpoints: Sequence[int]) -> List[int]:
    """Where to cut a loop over ``ceil(extent / tile)`` tiles so that within each piece every tap
    reads the image for all of its pixels or for none: a tile holding a breakpoint inside it is a
    piece of its own, and so is a last, partial tile."""
    tiles = -(-extent // tile)
    cuts = {extent // tile} if extent % tile else set()
    for b in breakpoints:
        cuts.add(b // tile)
        if b % tile:
            cuts.add(b // tile + 1)
    return sorted(c for c in cuts if 0 < c < tiles)


def partition_nest(sch: s_tir.Schedule, block, levels: Sequence[Tuple[int, Callable[[Tuple[int, ...]], List[int]]]],
                   chosen: Tuple[int, ...] = ()) -> None:
    """Split the loops of ``block`` into pieces, level by level (``loop_partition``).

    Each level is ``(position, cuts)``: the loop at ``position`` in the block's loop list (counted
    from the innermost, as negative indices), cut where ``cuts(pieces chosen at the outer levels)``
    says; every piece is a copy of the block, partitioned further at the next level.
    """
    if not levels:
        return
    (position, cuts_of), rest = levels[0], levels[1:]
    loop = sch.get_loops(block)[position]
    cuts = cuts_of(chosen)
    if not cuts:
        partition_nest(sch, block, rest, chosen + (0,))
        return
    sizes = [b - a for a, b in zip([0] + cuts[:-1], cuts)]
    pieces = sch.loop_partition(loop, sizes + [None])
    for i, piece in enumerate(pieces):
        inner = sch.get_child_blocks(piece)
        partition_nest(sch, inner[0], rest, chosen + (i,))


# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlockedTiles:
    """The blocked variant's tiles: ``rows x columns`` pixels x one channel vector in registers,
    ``chunk`` input channels per reduction step of a task (``deep``: its weights outgrow L2);
    ``row_ranges``/``column_ranges`` set when the taps reading zero padding are dropped (the
    padding then is not materialised)."""

    rows: int
    columns: int
    chunk: int
    deep: bool = False
    row_ranges: Optional[TapRanges] = None
    column_ranges: Optional[TapRanges] = None

    @property
    def skips_dead_taps(self) -> bool:
        return self.row_ranges is not None


def blocked_tiles(sch: s_tir.Schedule, workload, target, lanes: int, channels: int,
                  taps: Tuple[int, int], pixels: Tuple[int, int], sums_bytes: int, zero_padding: bool = True,
                  phases: Optional[Tuple[int, int]] = None, packed_taps: Optional[int] = None) -> BlockedTiles:
    """The blocked variant's tiles for a reduction over ``channels`` input channels x ``taps``.

    ``sch`` is the unscheduled function, whose ``pad`` stage is analysed (``zero_padding`` only):
    its iteration variables are ``n, co, oh, ow, rc, rh, rw`` (conv2d), or with ``phases`` the
    transposed compute's ``n, co, ph, pw, qh, qw, rc, rh, rw``, whose phases are then unrolled
    into pieces of their own.  ``sums_bytes``: a task's sums; ``packed_taps``: taps per input channel
    in the packed weights (default: ``taps``; a transposed layer packs every phase's).
    """
    kh, kw = taps
    itemsize = DTYPE_BYTES[workload.dtype]
    deep = channels * kh * kw * lanes * itemsize > DEEP_WEIGHT_BYTES
    limit = pixel_tile_limit(workload, target, lanes)
    # A 1x1 kernel reuses each weight vector only across the tile's pixels, so there the tile takes
    # every register it may (the last tile holding the remainder): single-threaded on znver3 (AVX2,
    # 6-pixel limit), 32 wide, 6 columns against the divisor 4: Conv2d(2048, 512, 1) 40 -> 52
    # GFLOP/s, (1024, 512, 1) 46 -> 53, (256, 64, 1) on 56x56 55 -> 65; 3x3 keeps the divisor
    # (64 channels on 56x56: 76 GFLOP/s with 4 columns, 66 with 6).
    columns = min(pixels[1], limit) if kh * kw == 1 else tile_extent(pixels[1], limit)
    rows = tile_extent(pixels[0], max(1, limit // columns))
    row_ranges = column_ranges = None
    if zero_padding and kh * kw <= MAX_UNROLLED_TAPS:
        off = 2 if phases else 0           # the transposed compute's phase axes come first
        row_ranges = tap_ranges(sch, 2, 2 + off, 5 + off, kh, pixels[0], 2 if phases else None,
                                phases[0] if phases else 1)
        column_ranges = tap_ranges(sch, 3, 3 + off, 6 + off, kw, pixels[1], 3 if phases else None,
                                   phases[1] if phases else 1)
    if dead_tap_share(row_ranges, column_ranges) < DEAD_TAP_SHARE or \
            _pieces(pixels, (rows, columns), row_ranges, column_ranges) * kh * kw * rows * columns > MAX_UNROLLED:
        row_ranges = column_ranges = None
    chunk = reduction_chunk(channels, (packed_taps or kh * kw) * lanes * itemsize, sums_bytes)
    return BlockedTiles(rows, columns, chunk, deep, row_ranges, column_ranges)


def _pieces(pixels, tile, row_ranges: TapRanges, column_ranges: TapRanges) -> int:
    """How many copies of the tile loops ``partition_pieces`` makes to drop the dead taps."""
    def count(axis, ranges, phase):
        return len(tile_cuts(pixels[axis], tile[axis], ranges.breakpoints(phase))) + 1
    return sum(count(0, row_ranges, ph) * count(1, column_ranges, pw)
               for ph in range(len(row_ranges.ranges)) for pw in range(len(column_ranges.ranges)))


def split_blocked_tiles(sch: s_tir.Schedule, tiles: BlockedTiles, reduction, pixel_loops, pixel_limit: int):
    """Split the reduction into chunks and the pixel loops (rows, columns) into the register tile,
    as the design space's decisions (``tunable_split``): the chunk any divisor of the channels up to
    ``4 * CHUNK_CHANNELS`` (or the hand chunk if larger), each pixel tile a divisor of its axis up to
    ``pixel_limit``.  The pixel tiles stay fixed where the tiles drop dead taps: ``partition_pieces``
    cuts the tile loops where the hand tiles cross a padding edge, cuts another tile would move.
    Returns ``[(outer, inner)]`` for the reduction, then each pixel loop."""
    chunk = tunable_split(sch, reduction, tiles.chunk, max_tile=max(tiles.chunk, 4 * CHUNK_CHANNELS))
    splits = []
    for loop, tile in zip(pixel_loops, (tiles.rows, tiles.columns)):
        if tiles.skips_dead_taps:
            splits.append(sch.split(loop, factors=[None, tile]))
        else:
            splits.append(tunable_split(sch, loop, tile, max_tile=max(tile, pixel_limit)))
    return [chunk, *splits]


def register_tile(sch: s_tir.Schedule, co_i, pixel_loops, taps=()) -> None:
    """Channels vectorised, the tile's pixels (and ``taps``) unrolled: the accumulators of one
    vector of channels x the tile's pixels stay in registers through the reduction loops."""
    sch.vectorize(co_i)
    for loop in (*pixel_loops, *taps):
        if int(sch.get(loop).extent) > 1:
            sch.unroll(loop)


def partition_pieces(sch: s_tir.Schedule, tiles: BlockedTiles, pixels: Tuple[int, int],
                     tile_loops: Tuple[int, int], phase_loops: Tuple[int, ...] = ()) -> None:
    """Split the ``conv_update`` block's pixel-tile loops (at positions ``tile_loops``, counted from
    the innermost; a row position None: the rows are not cut, their tiles divide the height and no
    dead taps are dropped) into pieces: a last, partial tile on its own (its predicate then folds away),
    and, where ``tiles`` drop dead taps, the phase loops (``phase_loops``) one phase per piece and
    every tile that straddles a padding edge on its own, so that in each piece a tap reads the image
    for all pixels or for none (dead taps then fold away once the taps are unrolled)."""
    def cuts(axis: int, ranges: Optional[TapRanges], tile: int):
        phased = bool(phase_loops)
        return lambda chosen: tile_cuts(pixels[axis], tile, ranges.breakpoints(chosen[axis] if phased else 0)
                                        if ranges is not None else ())
    levels = [(loop, lambda chosen, count=count: list(range(1, count)))
              for loop, count in phase_loops] if tiles.skips_dead_taps else []
    if tile_loops[0] is not None:
        levels.append((tile_loops[0], cuts(0, tiles.row_ranges, tiles.rows)))
    levels.append((tile_loops[1], cuts(1, tiles.column_ranges, tiles.columns)))
    partition_nest(sch, sch.get_sblock("conv_update"), levels)
