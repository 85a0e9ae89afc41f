"""Micro-benchmark of the compiled CPU kernels (kernels._cpu) against numpy float32 BLAS.

Prints four tables:
- the memory bandwidth ceiling (np.sum over a 500 MB array; np.copyto counted as read + write);
- decode: one activation row (T=1) times each weight type, for a [3584 x 1024] matrix and a
  vocab-sized [248320 x 1024] output layer, as GB/s of weight bytes read and matrix-vector
  products per second, next to numpy's float32 matvec on the dequantized matrix;
- batch: T=1, 4 and 8 rows (batched decoding) for the decode shapes, as time per call and the
  ratio to T=1: the extra rows should cost little next to reading the weights once;
- prompt: T=512 rows, GFLOP/s of the int8 kernel, of dequantized tiles fed to BLAS, and of
  numpy's `x @ W_f32.T`.

Every figure is the best of --repeat runs, with the spread (median / best - 1): the machine is
shared and noisy. Large matrices repeat one quantized tile of rows: the bytes read are the
same as for distinct rows.

    python scripts/bench_kernels.py [--repeat 10] [--threads 1,2] [--types Q4_K,Q8_0] [--quick]
                                    [--cpu-time] [--batch-only]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
from gguf import GGMLQuantizationType as QT
from threadpoolctl import threadpool_limits

from kernels import _cpu, quant

DECODE_SHAPES = [(3584, 1024), (248320, 1024)]
PROMPT_SHAPES = [(3584, 1024), (1024, 3584)]
PROMPT_T = 512
TILE_ROWS = 4096  # distinct rows quantized; bigger matrices repeat them
DEQUANT_TILE_BYTES = 4 << 20  # float32 tile fed to BLAS by the dequant + GEMM variant


CLOCK = time.perf_counter  # --cpu-time: time.process_time, steadier on a busy machine (1 thread)


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Best time of `repeat` runs (after one warm-up) and the spread median / best - 1."""
    fn()
    times = []
    for _ in range(repeat):
        start = CLOCK()
        fn()
        times.append(CLOCK() - start)
    best = min(times)
    return best, statistics.median(times) / best - 1


def weight_bytes(qtype: QT, n_rows: int, k: int, rng: np.random.Generator) -> np.ndarray:
    tile_rows = min(n_rows, TILE_ROWS)
    tile = quant.quantize(rng.standard_normal((tile_rows, k)).astype(np.float32), qtype)
    tile = np.ascontiguousarray(tile).view(np.uint8).reshape(tile_rows, -1)
    reps = -(-n_rows // tile_rows)
    return np.ascontiguousarray(np.tile(tile, (reps, 1))[:n_rows]).reshape(-1)


def dequantized(w: np.ndarray, qtype: QT, n_rows: int, k: int) -> np.ndarray:
    out = np.empty((n_rows, k), dtype=np.float32)
    _cpu.dequant_rows(w, int(qtype), k, 0, n_rows, out)
    return out


def bandwidth(repeat: int) -> None:
    big = np.ones(500_000_000 // 4, dtype=np.float32)
    copy = np.empty_like(big)
    t_sum, s_sum = timed(lambda: big.sum(), repeat)
    t_copy, s_copy = timed(lambda: np.copyto(copy, big), repeat)
    print("## Bandwidth ceiling (one thread)")
    print(f"np.sum 500 MB:    {big.nbytes / t_sum / 1e9:6.1f} GB/s  (spread {s_sum:.0%})")
    print(f"np.copyto 500 MB: {2 * big.nbytes / t_copy / 1e9:6.1f} GB/s read+write  (spread {s_copy:.0%})\n")


def decode(types: list[QT], threads: list[int], shapes: list[tuple[int, int]], repeat: int, rng) -> None:
    print("## Decode: T=1 matrix-vector product")
    print(f"{'shape':>14} {'type':>7} {'thr':>3} {'ms':>8} {'GB/s':>6} {'mv/s':>8} {'spread':>6} | "
          f"{'np f32 ms':>9} {'GB/s':>6} {'speedup':>7}")
    for n_rows, k in shapes:
        x = rng.standard_normal((1, k)).astype(np.float32)
        out = np.empty((1, n_rows), dtype=np.float32)
        reference = dequantized(weight_bytes(QT.F32, n_rows, k, rng), QT.F32, n_rows, k)
        numpy_times = {}
        for n in threads:
            with threadpool_limits(n):
                numpy_times[n] = timed(lambda: reference @ x[0], repeat)[0]
        for qtype in types:
            w = weight_bytes(qtype, n_rows, k, rng)
            for n in threads:
                _cpu.set_threads(n)
                best, spread = timed(lambda: _cpu.qmatmul(w, int(qtype), n_rows, k, x, out), repeat)
                t_np = numpy_times[n]
                print(f"{n_rows:>7}x{k:<6} {qtype.name:>7} {n:>3} {best * 1e3:8.3f} {w.nbytes / best / 1e9:6.1f} "
                      f"{1 / best:8.0f} {spread:6.0%} | {t_np * 1e3:9.3f} {reference.nbytes / t_np / 1e9:6.1f} "
                      f"{t_np / best:6.1f}x")
        del reference
    print()


BATCH_T = (1, 4, 8)


def batch(types: list[QT], threads: list[int], shapes: list[tuple[int, int]], repeat: int, rng) -> None:
    print(f"## Batch: T={'/'.join(map(str, BATCH_T))} rows per call, ms and ratio to T=1")
    header = " ".join(f"{'T=' + str(t) + ' ms':>9}" for t in BATCH_T)
    ratios = " ".join(f"{'x' + str(t):>5}" for t in BATCH_T[1:])
    print(f"{'shape':>14} {'type':>7} {'thr':>3} {header} {ratios}")
    for n_rows, k in shapes:
        xs = {t: rng.standard_normal((t, k)).astype(np.float32) for t in BATCH_T}
        outs = {t: np.empty((t, n_rows), dtype=np.float32) for t in BATCH_T}
        for qtype in types:
            w = weight_bytes(qtype, n_rows, k, rng)
            for n in threads:
                _cpu.set_threads(n)
                ms = {t: timed(lambda: _cpu.qmatmul(w, int(qtype), n_rows, k, xs[t], outs[t]), repeat)[0] * 1e3
                      for t in BATCH_T}
                cells = " ".join(f"{ms[t]:9.3f}" for t in BATCH_T)
                rel = " ".join(f"{ms[t] / ms[1]:5.2f}" for t in BATCH_T[1:])
                print(f"{n_rows:>7}x{k:<6} {qtype.name:>7} {n:>3} {cells} {rel}")
    print()


def dequant_gemm(w: np.ndarray, qtype: QT, n_rows: int, k: int, x: np.ndarray, out: np.ndarray,
                 tile: np.ndarray) -> None:
    """The alternative prompt path: dequantize cache-sized row tiles and let BLAS multiply."""
    rows = tile.shape[0]
    for r0 in range(0, n_rows, rows):
        r1 = min(n_rows, r0 + rows)
        _cpu.dequant_rows(w, int(qtype), k, r0, r1, tile[:r1 - r0])
        out[:, r0:r1] = x @ tile[:r1 - r0].T


def prompt(types: list[QT], threads: list[int], repeat: int, rng) -> None:
    print(f"## Prompt: T={PROMPT_T} rows, GFLOP/s (2*T*n*k / time)")
    print(f"{'shape':>14} {'type':>7} {'thr':>3} {'int8 kernel':>11} {'spread':>6} {'dequant+BLAS':>12} "
          f"{'np f32':>7} {'kernel/np':>9}")
    for n_rows, k in PROMPT_SHAPES:
        x = rng.standard_normal((PROMPT_T, k)).astype(np.float32)
        out = np.empty((PROMPT_T, n_rows), dtype=np.float32)
        flops = 2 * PROMPT_T * n_rows * k
        tile = np.empty((max(1, DEQUANT_TILE_BYTES // (4 * k)), k), dtype=np.float32)
        for qtype in types:
            w = weight_bytes(qtype, n_rows, k, rng)
            reference = dequantized(w, qtype, n_rows, k)
            for n in threads:
                _cpu.set_threads(n)
                with threadpool_limits(n):
                    best, spread = timed(lambda: _cpu.qmatmul(w, int(qtype), n_rows, k, x, out), repeat)
                    t_tiles = timed(lambda: dequant_gemm(w, qtype, n_rows, k, x, out, tile), repeat)[0]
                    t_np = timed(lambda: x @ reference.T, repeat)[0]
                print(f"{n_rows:>7}x{k:<6} {qtype.name:>7} {n:>3} {flops / best / 1e9:11.1f} {spread:6.0%} "
                      f"{flops / t_tiles / 1e9:12.1f} {flops / t_np / 1e9:7.1f} {t_np / best:8.2f}x")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=10, help="runs per figure (best is kept)")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--types", default=None, help="comma-separated GGML type names (default: all)")
    parser.add_argument("--prompt-types", default="Q4_K,Q6_K,Q8_0", help="types for the T=512 table")
    parser.add_argument("--quick", action="store_true", help="skip the vocab-sized matrix and bandwidth")
    parser.add_argument("--batch-only", action="store_true", help="print only the T=1/4/8 table")
    parser.add_argument("--batch-types", default="Q4_K,Q6_K,Q8_0", help="types for the T=1/4/8 table")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time by process CPU time (meaningful with --threads 1): other processes' "
                             "use of the cores then does not count")
    args = parser.parse_args()
    global CLOCK
    if args.cpu_time:
        CLOCK = time.process_time
    threads = [int(n) for n in args.threads.split(",")]
    supported = [QT(t) for t in _cpu.supported_types()]
    types = [QT[name] for name in args.types.split(",")] if args.types else supported
    rng = np.random.default_rng(0)
    print(f"kernels._cpu variant: {_cpu.isa()} (available: {', '.join(_cpu.available_isas())})\n")
    shapes = DECODE_SHAPES[:1] if args.quick else DECODE_SHAPES
    batch([QT[name] for name in args.batch_types.split(",")], threads, shapes, args.repeat, rng)
    if args.batch_only:
        return
    if not args.quick:
        bandwidth(args.repeat)
    decode(types, threads, shapes, args.repeat, rng)
    prompt([QT[name] for name in args.prompt_types.split(",")], threads, args.repeat, rng)


if __name__ == "__main__":
    main()
