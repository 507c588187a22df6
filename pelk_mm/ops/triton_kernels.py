"""Triton kernels of the fused peripheral convolution (imported lazily).

Plain Python functions in Triton's language; :mod:`pelk_mm.ops.triton_conv`
compiles them with ``triton.jit`` for CUDA tensors and runs them through
Triton's interpreter for CPU tensors. They call only Triton builtins (no
``tl.sum`` / ``tl.cumsum``, which Triton decorates when it is imported), so
the interpreter runs them whatever ``TRITON_INTERPRET`` was at that import.
For the same reason each kernel writes out its own row-band loop: a helper
shared by both would have to be a ``triton.jit`` function for the compiler
and a plain one for the interpreter.

Notation of :mod:`pelk_mm.ops.band_geometry`: band edges ``e_0 = 0 < ... <
e_k' = K`` (``edges_ptr``, int32), ``P = K // 2``. Tensors are contiguous
NCHW. One program owns one map ``(n, c)`` (axis 0), ``BLOCK_W`` output
columns from ``j0`` (axis 1) and ``rows`` output rows from ``i0`` (axis 2),
which it walks one at a time. Its input window is the columns
``j0 - P + t``, ``t < BLOCK_W + K - 1`` (tile and halo; ``HALO_W`` is that
rounded up to a power of two); taps outside the map count as zero (the
"same" zero padding: masked loads, and the tap loops skip rows and columns
that fall outside the map). Every sum is a direct sum
of at most ``K`` terms in the accumulation dtype (float32, float64 for
float64 inputs): no prefix sums, so the round-off is that of a direct
convolution whatever the map size or the input's mean.
"""
import triton.language as tl


def correlate_kernel(x_ptr, w_ptr, edges_ptr, out_ptr, scratch_ptr, channels,
                     height, width, bands, half, rows, BLOCK_W: tl.constexpr,
                     HALO_W: tl.constexpr, BANDS_P: tl.constexpr,
                     WIDE: tl.constexpr):
    """``out(i, j) = sum_ab w(a, b) sum_{u in a, v in b} x(i + u - P,
    j + v - P)`` on one tile, output row by output row:

    1. row-band sums ``R_a(t) = sum_{u in band a} x(i + u - P, j0 - P + t)``
       (``K`` row loads in all), mixed in registers into
       ``Z_b(t) = sum_a w(a, b) R_a(t)`` (``BANDS_P x HALO_W``);
    2. ``Z`` goes to the program's scratch slot (``BANDS_P x HALO_W``, stays
       in L1/L2), then ``out(i, j0 + s) = sum_b sum_{v in band b}
       Z_b(s + v)`` (``K`` shifted reads of the slot), rounded once to the
       output dtype by the store (to nearest even on GPUs; Triton's
       interpreter rounds bfloat16 towards zero).
    """
    plane = tl.program_id(0)
    tile = tl.program_id(1)
    chunk = tl.program_id(2)
    acc = tl.float64 if WIDE else tl.float32
    j0 = tile * BLOCK_W
    t = tl.arange(0, HALO_W)
    s = tl.arange(0, BLOCK_W)
    band = tl.arange(0, BANDS_P)
    cols = j0 - half + t
    col_ok = (cols >= 0) & (cols < width) & (t < BLOCK_W + 2 * half)
    base = plane.to(tl.int64) * height * width
    program = (plane.to(tl.int64) * tl.num_programs(1) +
               tile) * tl.num_programs(2) + chunk
    slot = scratch_ptr + program * BANDS_P * HALO_W
    w_plane = w_ptr + (plane % channels) * bands * bands
    for step in range(0, rows):
        i = chunk * rows + step
        mixed = tl.full((BANDS_P, HALO_W), 0.0, acc)
        for a in range(0, bands):
            band_sum = tl.full((HALO_W, ), 0.0, acc)
            u_lo = tl.maximum(tl.load(edges_ptr + a), half - i)
            u_hi = tl.minimum(tl.load(edges_ptr + a + 1), half - i + height)
            for u in range(u_lo, u_hi):  # the band's rows inside the map
                r = i + u - half
                band_sum += tl.load(
                    x_ptr + base + r * width + cols,
                    mask=col_ok & (r >= 0) & (r < height),
                    other=0.0).to(acc)
            w_a = tl.load(
                w_plane + a * bands + band, mask=band < bands,
                other=0.0).to(acc)
            mixed += w_a[:, None] * band_sum[None, :]
        tl.store(slot + band[:, None] * HALO_W + t[None, :], mixed)
        tl.debug_barrier()  # the slot is written before it is read
        out_row = tl.full((BLOCK_W, ), 0.0, acc)
        for b in range(0, bands):  # taps v reading inside the map
            v_lo = tl.maximum(tl.load(edges_ptr + b), half - j0 - BLOCK_W + 1)
            v_hi = tl.minimum(tl.load(edges_ptr + b + 1), half - j0 + width)
            for v in range(v_lo, v_hi):
                out_row += tl.load(slot + b * HALO_W + s + v)
        tl.debug_barrier()  # and read before the next row overwrites it
        j = j0 + s
        tl.store(
            out_ptr + base + i * width + j,
            out_row,
            mask=(j < width) & (i < height))


def weight_grad_kernel(x_ptr, mean_ptr, dy_ptr, edges_ptr, partial_ptr,
                       scratch_ptr, height, width, bands, half, rows,
                       BLOCK_W: tl.constexpr, HALO_W: tl.constexpr,
                       BANDS_P: tl.constexpr, WIDE: tl.constexpr):
    """This program's share of ``sum_ij dy(i, j) box_ab(x - m)(i, j)``
    (``BANDS_P x BANDS_P``, written to ``partial_ptr[program]``; no atomics),
    with ``m = mean_ptr[plane]`` subtracted inside the map only (the mean
    split of :mod:`pelk_mm.ops.band_geometry`; the caller adds
    ``m sum dy box_ab(1)``).

    Per output row ``i``: ``R_a(t)`` as in :func:`correlate_kernel` and the
    mirrored column-band sums of the tile's output gradient ``E_b(t) =
    sum_{v in band b} dy(i, j0 + t - v)`` (``0 <= t - v < BLOCK_W``), one
    row per band into the program's scratch slot (``2 BANDS_P x HALO_W``),
    read back as two matrices, then ``dw += R E^T`` (``tl.dot`` in full
    precision, added to a float64 accumulator: ``BANDS_P^2`` float64 adds
    per row of ``BLOCK_W`` outputs); the rows are added in order.
    """
    plane = tl.program_id(0)
    tile = tl.program_id(1)
    chunk = tl.program_id(2)
    acc = tl.float64 if WIDE else tl.float32
    j0 = tile * BLOCK_W
    t = tl.arange(0, HALO_W)
    band = tl.arange(0, BANDS_P)
    cols = j0 - half + t
    col_ok = (cols >= 0) & (cols < width) & (t < BLOCK_W + 2 * half)
    base = plane.to(tl.int64) * height * width
    program = (plane.to(tl.int64) * tl.num_programs(1) +
               tile) * tl.num_programs(2) + chunk
    slot = scratch_ptr + program * 2 * BANDS_P * HALO_W
    matrix = band[:, None] * HALO_W + t[None, :]
    used = (band < bands)[:, None]  # rows of padding bands read zero
    mean = tl.load(mean_ptr + plane).to(acc)
    grad_w = tl.full((BANDS_P, BANDS_P), 0.0, tl.float64)
    for step in range(0, rows):
        i = chunk * rows + step
        for a in range(0, bands):
            lo = tl.load(edges_ptr + a)
            hi = tl.load(edges_ptr + a + 1)
            band_sum = tl.full((HALO_W, ), 0.0, acc)
            for u in range(
                    tl.maximum(lo, half - i),
                    tl.minimum(hi, half - i + height)):
                r = i + u - half
                band_sum += tl.where(
                    col_ok,
                    tl.load(
                        x_ptr + base + r * width + cols,
                        mask=col_ok,
                        other=0.0).to(acc) - mean, 0.0)
            tl.store(slot + a * HALO_W + t, band_sum)
            band_sum = tl.full((HALO_W, ), 0.0, acc)
            for v in range(lo, hi):
                s = t - v
                j = j0 + s
                band_sum += tl.load(
                    dy_ptr + base + i * width + j,
                    mask=(s >= 0) & (s < BLOCK_W) & (j < width) & (i < height),
                    other=0.0).to(acc)
            tl.store(slot + (BANDS_P + a) * HALO_W + t, band_sum)
        tl.debug_barrier()  # the slot is written before it is read
        row_sums = tl.load(slot + matrix, mask=used, other=0.0)
        col_sums = tl.load(
            slot + BANDS_P * HALO_W + matrix, mask=used, other=0.0)
        tl.debug_barrier()  # and read before the next row overwrites it
        grad_w += tl.dot(
            row_sums, tl.trans(col_sums),
            input_precision='ieee').to(tl.float64)
    tl.store(
        partial_ptr + program * BANDS_P * BANDS_P + band[:, None] * BANDS_P +
        band[None, :], grad_w)
