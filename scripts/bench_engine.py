"""Prompt and generation throughput of the numpy engine, side by side with llama.cpp.

Both engines run the same GGUF file with the same thread count; measurements alternate between
them in one process run (warm-up first) and the table reports the best of `--repeats` runs.
llama.cpp is measured only when `llama-cpp-python` is installed.

    python scripts/bench_engine.py [--presets tiny small] [--qtype f32] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def _set_threads(n: int) -> None:
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)


class Ours:
    name = "agentd (numpy)"

    def __init__(self, path: Path):
        import engine

        self.model = engine.load_model(path)

    def prompt(self, ids: list[int]) -> None:
        from engine.generate import prefill

        prefill(self.model, ids, self.model.new_state())

    def start(self, ids: list[int]) -> None:
        self.state = self.model.new_state()
        self.model.forward(ids, self.state, last_only=True)

    def decode(self, ids: list[int]) -> None:
        for t in ids:
            self.model.forward([t], self.state, last_only=True)


class LlamaCpp:
    name = "llama.cpp"

    def __init__(self, path: Path, threads: int, n_ctx: int):
        import llama_cpp

        self.llm = llama_cpp.Llama(
            model_path=str(path), n_threads=threads, n_threads_batch=threads, n_ctx=n_ctx,
            n_batch=512, n_ubatch=512, verbose=False,
        )

    def prompt(self, ids: list[int]) -> None:
        self.llm.reset()
        self.llm.eval(ids)

    def start(self, ids: list[int]) -> None:
        self.llm.reset()
        self.llm.eval(ids)

    def decode(self, ids: list[int]) -> None:
        for t in ids:
            self.llm.eval([t])


def _time(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "small"])
    ap.add_argument("--qtype", default="f32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--gen-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model-dir", default=None, help="where to write/reuse the benchmark GGUF files")
    args = ap.parse_args()
    _set_threads(args.threads)

    import numpy as np

    from engine.synthetic import make_model

    try:
        import llama_cpp  # noqa: F401

        have_llama = True
    except ImportError:
        have_llama = False
        print("llama-cpp-python not installed: measuring agentd only", file=sys.stderr)

    model_dir = Path(args.model_dir or tempfile.mkdtemp(prefix="agentd-bench-"))
    rng = np.random.default_rng(0)
    ids = [int(x) for x in rng.integers(0, 200_000, args.prompt_tokens)]
    rows = []
    for preset in args.presets:
        path = model_dir / f"{preset}-{args.qtype}.gguf"
        if not path.exists():
            print(f"writing {path} ...", file=sys.stderr)
            make_model(path, preset, seed=0, qtype_mix=args.qtype, progress=True)
        engines = [Ours(path)]
        if have_llama:
            engines.append(LlamaCpp(path, args.threads, args.prompt_tokens + args.gen_tokens + 16))
        decode_ids = ids[16 : 16 + args.gen_tokens]
        for e in engines:  # warm-up
            e.prompt(ids[:64])
            e.start(ids[:16])
            e.decode(ids[:2])
        best = {e.name: [float("inf"), float("inf")] for e in engines}
        for r in range(args.repeats):
            for e in engines:
                print(f"{preset}: {e.name} repeat {r + 1}/{args.repeats}", file=sys.stderr)
                best[e.name][0] = min(best[e.name][0], _time(e.prompt, ids))
                e.start(ids[:16])  # generation = single-token steps after a short prompt
                best[e.name][1] = min(best[e.name][1], _time(e.decode, decode_ids))
        for e in engines:
            pp = args.prompt_tokens / best[e.name][0]
            tg = args.gen_tokens / best[e.name][1]
            rows.append((preset, args.qtype, e.name, pp, tg))
        if have_llama:
            ours, ref = rows[-2], rows[-1]
            rows.append((preset, args.qtype, "ratio agentd/llama.cpp", ours[3] / ref[3], ours[4] / ref[4]))

    print(f"\nthreads={args.threads} prompt={args.prompt_tokens} tokens, generation={args.gen_tokens} tokens\n")
    print("| model | type | engine | prompt tok/s | generation tok/s |")
    print("|---|---|---|---:|---:|")
    for preset, qtype, name, pp, tg in rows:
        fmt = "{:.2f}x" if name.startswith("ratio") else "{:.1f}"
        print(f"| {preset} | {qtype} | {name} | {fmt.format(pp)} | {fmt.format(tg)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
