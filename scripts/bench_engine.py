"""Load time, memory and throughput of the agentd engine, side by side with llama.cpp on the same GGUF files.

Each measurement runs in a fresh worker process (this script with --worker), so resident memory is
one engine's alone. Per repeat, one worker per engine runs in turn (alternating, so drift on a
shared machine hits all engines alike); each loads the model (start to ready, imports included),
reads its RSS, warms up, then times a --prompt-tokens prompt and --gen-tokens single-token decode
steps after a 16-token prompt. Both engines get the same file and --threads. The table gives the
best of --repeats with the spread ((worst - best) / best) and, per agentd backend, the ratio
agentd / llama.cpp of each column. llama.cpp is measured only when llama-cpp-python is installed.

    python scripts/bench_engine.py --models A.gguf [B.gguf ...] [--backends cpu numpy] [--threads 2]
    python scripts/bench_engine.py --models A.gguf --backends          # llama.cpp alone (a baseline)
    python scripts/bench_engine.py [--presets tiny small] [--qtype f32] [--model-dir DIR]

A backend name is passed on as engine.load_model(path, backend=NAME, threads=N); `default` passes
neither (the engine's own choice).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # measure this checkout's engine, also in the workers

LLAMA = "llama.cpp"
DEFAULT_BACKEND = "default"
MB = 1 << 20
# (result key, column title, higher is better, cell format)
COLUMNS = (
    ("load_s", "load s", False, "{:.2f}"),
    ("rss", "RSS after load MB", False, "{:.0f}"),
    ("peak_rss", "peak RSS MB", False, "{:.0f}"),
    ("prompt_tps", "prompt tok/s", True, "{:.1f}"),
    ("gen_tps", "generation tok/s", True, "{:.2f}"),
)


def _set_threads(n: int) -> None:
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)


class Ours:
    def __init__(self, path: Path, backend: str, threads: int):
        import engine

        kwargs = {} if backend == DEFAULT_BACKEND else {"backend": backend, "threads": threads}
        self.model = engine.load_model(path, **kwargs)

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
        self.prompt(ids)

    def decode(self, ids: list[int]) -> None:
        for t in ids:
            self.llm.eval([t])


def _time(fn: Callable, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def _proc_status_mb(key: str) -> float:
    """VmRSS / VmHWM of this process from /proc/self/status (kB there)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024 / MB
    raise RuntimeError(f"{key} not in /proc/self/status")


def measure(engine_name: str, path: Path, threads: int, prompt_tokens: int, gen_tokens: int) -> dict[str, float]:
    """One worker's figures: load seconds, RSS after load and at peak (MB), prompt and generation tok/s."""
    rng = random.Random(0)
    ids = [rng.randrange(200_000) for _ in range(max(prompt_tokens, 16 + gen_tokens))]  # decode reads ids[16:]
    start = time.perf_counter()
    if engine_name == LLAMA:
        runner = LlamaCpp(path, threads, prompt_tokens + gen_tokens + 16)
    else:
        runner = Ours(path, engine_name, threads)
    load_s = time.perf_counter() - start
    rss = _proc_status_mb("VmRSS")
    runner.prompt(ids[:64])  # warm-up
    runner.start(ids[:16])
    runner.decode(ids[:2])
    prompt_s = _time(runner.prompt, ids[:prompt_tokens])
    runner.start(ids[:16])  # generation = single-token steps after a short prompt
    decode_s = _time(runner.decode, ids[16 : 16 + gen_tokens])
    return {"load_s": load_s, "rss": rss, "peak_rss": _proc_status_mb("VmHWM"),
            "prompt_tps": prompt_tokens / prompt_s, "gen_tps": gen_tokens / decode_s}


def run_worker(engine_name: str, path: Path, args: argparse.Namespace) -> dict[str, float] | None:
    """Measure in a fresh process; None (with its error on stderr) when it fails."""
    command = [sys.executable, __file__, "--worker", engine_name, str(path), "--threads", str(args.threads),
               "--prompt-tokens", str(args.prompt_tokens), "--gen-tokens", str(args.gen_tokens)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        print(f"{path.name}: {engine_name} failed:\n{result.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(result.stdout.splitlines()[-1])


def model_files(args: argparse.Namespace) -> list[Path]:
    """--models as given, or the --presets written (once) into --model-dir."""
    if args.models:
        missing = [p for p in args.models if not p.is_file()]
        if missing:
            sys.exit(f"no such model file: {', '.join(map(str, missing))}")
        return args.models
    from engine.synthetic import make_model

    model_dir = Path(args.model_dir or tempfile.mkdtemp(prefix="agentd-bench-"))
    paths = []
    for preset in args.presets:
        path = model_dir / f"{preset}-{args.qtype}.gguf"
        if not path.exists():
            print(f"writing {path} ...", file=sys.stderr)
            make_model(path, preset, seed=0, qtype_mix=args.qtype, progress=True)
        paths.append(path)
    return paths


def engine_label(engine_name: str) -> str:
    return engine_name if engine_name == LLAMA else f"agentd ({engine_name})"


def best(values: list[float], higher_is_better: bool) -> float:
    return max(values) if higher_is_better else min(values)


def cells(runs: list[dict[str, float]]) -> list[str]:
    """Best of the runs per column, with the spread between best and worst."""
    out = []
    for key, _, higher, fmt in COLUMNS:
        values = [run[key] for run in runs]
        top = best(values, higher)
        spread = (max(values) - min(values)) / top if top else 0.0
        out.append(f"{fmt.format(top)} ±{spread:.0%}")
    return out


def ratio_cells(ours: list[dict[str, float]], ref: list[dict[str, float]]) -> list[str]:
    return [f"{best([r[key] for r in ours], higher) / best([r[key] for r in ref], higher):.2f}x"
            for key, _, higher, _ in COLUMNS]


def table(files: list[Path], engines: list[str], runs: dict[tuple[Path, str], list[dict[str, float]]]) -> str:
    """Markdown table: one row per (file, engine) and one ratio row per agentd backend."""
    lines = ["| model | file MB | engine | " + " | ".join(title for _, title, _, _ in COLUMNS) + " |",
             "|---|---:|---|" + "---:|" * len(COLUMNS)]
    for path in files:
        head = f"| {path.name} | {path.stat().st_size / MB:.0f} |"
        for name in engines:
            done = runs[path, name]
            row = cells(done) if done else ["failed"] * len(COLUMNS)
            lines.append(f"{head} {engine_label(name)} | " + " | ".join(row) + " |")
        ref = runs.get((path, LLAMA))
        for name in engines:
            if name != LLAMA and ref and runs[path, name]:
                row = ratio_cells(runs[path, name], ref)
                lines.append(f"{head} ratio {engine_label(name)} / {LLAMA} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", type=Path, help="existing GGUF files (instead of --presets)")
    ap.add_argument("--presets", nargs="+", default=["tiny", "small"], help="synthetic presets to write and measure")
    ap.add_argument("--qtype", default="f32", help="type mix of the --presets files")
    ap.add_argument("--model-dir", default=None, help="where to write/reuse the --presets files")
    ap.add_argument("--backends", nargs="*", default=[DEFAULT_BACKEND],
                    help=f"agentd backends to measure (engine.load_model backend=NAME; '{DEFAULT_BACKEND}': none); "
                         f"give none to measure {LLAMA} alone")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--gen-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--worker", nargs=2, metavar=("ENGINE", "FILE"), help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _set_threads(args.threads)
    if args.worker:
        engine_name, path = args.worker
        print(json.dumps(measure(engine_name, Path(path), args.threads, args.prompt_tokens, args.gen_tokens)))
        return 0
    if LLAMA in args.backends:
        sys.exit(f"{LLAMA} is always measured when installed; --backends names agentd backends")
    import importlib.util

    files = model_files(args)
    engines = list(args.backends)
    if importlib.util.find_spec("llama_cpp"):
        engines.append(LLAMA)
    else:
        print("llama-cpp-python not installed: measuring agentd only", file=sys.stderr)
    if not engines:
        sys.exit("nothing to measure: no --backends and llama-cpp-python not installed")
    runs: dict[tuple[Path, str], list[dict[str, float]]] = {(p, e): [] for p in files for e in engines}
    for path in files:
        for r in range(args.repeats):
            for name in engines:
                print(f"{path.name}: {engine_label(name)} repeat {r + 1}/{args.repeats}", file=sys.stderr)
                if (result := run_worker(name, path, args)) is not None:
                    runs[path, name].append(result)

    print(f"\nthreads={args.threads} prompt={args.prompt_tokens} tokens, generation={args.gen_tokens} tokens, "
          f"best of {args.repeats} ±spread; ratio = agentd / {LLAMA} (tok/s: >1 is faster; s, MB: >1 is more)\n")
    print(table(files, engines, runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
