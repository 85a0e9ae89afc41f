"""Concurrent streaming clients against one agentd daemon: what batched decoding buys.

Starts `agentd serve` on --model (or drives --url), then per repeat and per stream count N runs N
streaming /v1/completions clients at once (greedy, distinct token-id prompts) and measures
aggregate generated tokens/s and each stream's time per output token (TPOT). A last scenario
keeps --long-streams streams decoding while one --long-prompt-token prompt is sent: the streams'
worst inter-token gap while it is processed, against their median gap. Prints a markdown table:
best of --repeats, with the spread ((worst - best) / best).

    python scripts/bench_serve.py --model /work/models/0.8B-q4_k_m.gguf --threads 2
    python scripts/bench_serve.py --url http://127.0.0.1:8080 --streams 1 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

import aiohttp


@dataclass
class Stream:
    sent_at: float
    token_times: list[float] = field(default_factory=list)

    @property
    def tpot(self) -> float | None:
        t = self.token_times
        return (t[-1] - t[0]) / (len(t) - 1) if len(t) > 1 else None

    @property
    def gaps(self) -> list[tuple[float, float]]:
        """(when, gap) per consecutive pair of tokens."""
        t = self.token_times
        return [(b, b - a) for a, b in zip(t, t[1:])]


async def run_stream(session: aiohttp.ClientSession, url: str, prompt: list[int], max_tokens: int) -> Stream:
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    stream = Stream(time.monotonic())
    async with session.post(f"{url}/v1/completions", json=body) as resp:
        resp.raise_for_status()
        async for raw in resp.content:
            line = raw.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            if chunk.get("choices") and chunk["choices"][0].get("text") is not None:
                stream.token_times.append(time.monotonic())
    return stream


def prompts(rng: random.Random, n: int, length: int) -> list[list[int]]:
    return [[rng.randrange(1000, 100_000) for _ in range(length)] for _ in range(n)]


async def concurrent(url: str, n: int, gen_tokens: int, rng: random.Random) -> dict[str, float]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
        streams = await asyncio.gather(*(run_stream(session, url, p, gen_tokens) for p in prompts(rng, n, 32)))
    first = min(s.token_times[0] for s in streams)
    last = max(s.token_times[-1] for s in streams)
    generated = sum(len(s.token_times) - 1 for s in streams)
    tpots = [s.tpot for s in streams if s.tpot]
    return {"agg_tok_s": generated / (last - first), "tpot_ms": 1000 * statistics.mean(tpots)}


async def long_prompt_streams(url: str, n: int, prompt_tokens: int, rng: random.Random) -> dict[str, float]:
    """`n` streams decode while one long prompt is processed; their worst gap in that window
    against their median gap over the whole run."""
    streams = [Stream(0.0) for _ in range(n)]
    stop = asyncio.Event()

    async def decode(session: aiohttp.ClientSession, prompt: list[int], into: Stream) -> None:
        body = {"prompt": prompt, "max_tokens": 100_000, "temperature": 0, "stream": True}
        async with session.post(f"{url}/v1/completions", json=body) as resp:
            async for raw in resp.content:
                if stop.is_set():
                    return
                if raw.startswith(b"data: {"):
                    into.token_times.append(time.monotonic())

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
        tasks = [asyncio.create_task(decode(session, p, s)) for p, s in zip(prompts(rng, n, 32), streams)]
        await asyncio.sleep(3.0)
        long = await run_stream(session, url, prompts(rng, 1, prompt_tokens)[0], 1)
        await asyncio.sleep(2.0)
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    start, end = long.sent_at, long.token_times[0]
    gaps = [g for s in streams for g in s.gaps]
    during = [gap for when, gap in gaps if start <= when <= end]
    median = statistics.median(gap for _, gap in gaps)
    return {"prompt_s": end - start, "median_gap_ms": 1000 * median, "worst_gap_ms": 1000 * max(during),
            "worst_over_median": max(during) / median}


def start_daemon(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "agentd", "serve", "--model", args.model, "--port", str(port),
           "--parallel", str(max(args.streams + [args.long_streams + 1])), "--no-cache"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                pass
            import urllib.request

            with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("the daemon did not become ready")


def best(values: list[float], higher: bool) -> str:
    b, w = (max(values), min(values)) if higher else (min(values), max(values))
    return f"{b:.2f} (±{abs(w - b) / b:.0%})"


async def main_async(args: argparse.Namespace, url: str) -> None:
    rng = random.Random(0)
    await concurrent(url, 1, 4, rng)  # warm-up
    runs: dict[int, list[dict[str, float]]] = {n: [] for n in args.streams}
    longs: list[dict[str, float]] = []
    for _ in range(args.repeats):
        for n in args.streams:
            runs[n].append(await concurrent(url, n, args.gen_tokens, rng))
            print(f"  {n} streams: {runs[n][-1]}", file=sys.stderr)
        if args.long_prompt_tokens:
            longs.append(await long_prompt_streams(url, args.long_streams, args.long_prompt_tokens, rng))
            print(f"  long prompt: {longs[-1]}", file=sys.stderr)
    single = max(r["agg_tok_s"] for r in runs[args.streams[0]])
    single_tpot = min(r["tpot_ms"] for r in runs[args.streams[0]])
    print(f"\n{args.repeats} repeats, best (± spread = (worst - best) / best), {args.gen_tokens} tokens per stream\n")
    print(f"| streams | aggregate tok/s | x {args.streams[0]} stream | TPOT ms | TPOT x alone |")
    print("|---|---|---|---|---|")
    for n in args.streams:
        agg, tpot = [r["agg_tok_s"] for r in runs[n]], [r["tpot_ms"] for r in runs[n]]
        print(f"| {n} | {best(agg, True)} | {max(agg) / single:.2f} | {best(tpot, False)} | {min(tpot) / single_tpot:.2f} |")
    if longs:
        print(f"\n{args.long_streams} streams while a {args.long_prompt_tokens}-token prompt is processed:\n")
        print("| prompt s | median gap ms | worst gap ms | worst / median |")
        print("|---|---|---|---|")
        cols = ("prompt_s", "median_gap_ms", "worst_gap_ms", "worst_over_median")
        print("| " + " | ".join(best([r[c] for r in longs], False) for c in cols) + " |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="GGUF file to serve (a daemon is started)")
    p.add_argument("--url", help="a running daemon instead")
    p.add_argument("--threads", type=int)
    p.add_argument("--streams", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--gen-tokens", type=int, default=48)
    p.add_argument("--long-prompt-tokens", type=int, default=8000, help="0: skip the long-prompt scenario")
    p.add_argument("--long-streams", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    if bool(args.model) == bool(args.url):
        p.error("give one of --model or --url")
    proc = None
    url = args.url
    if args.model:
        proc, url = start_daemon(args)
    try:
        asyncio.run(main_async(args, url))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
