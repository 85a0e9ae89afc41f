"""Replay recorded coding-agent sessions against `agentd serve` and measure prompt-cache reuse.

Each trace (scripts/traces/*.json, written by scripts/traces/make_traces.py) is replayed three
times, each time against a daemon this script starts on 127.0.0.1 and stops again:

- off:     `agentd serve --no-cache`: every request processes its whole prompt;
- on:      `agentd serve --cache-dir D` with D a fresh temporary directory;
- restart: the `on` daemon is stopped, a new one starts on the same D, the trace is replayed again.

Once a daemon answers /health with 200, one tiny warm-up request goes first (it shares no prefix
with the traces). Every request sends the session's full conversation, as an agent does, through
the openai SDK: streaming with `stream_options={"include_usage": True}`, temperature 0, the trace's
max_tokens (a few tokens: the point is prompt processing). Per request it records the prompt
tokens and `usage.prompt_tokens_details.cached_tokens` the server reports, and the time to first
token. On the CPU engine a full run takes hours (cache off re-processes every prompt); use
--off-every to replay a sample of the requests without the cache, and --turns, --trace and
--modes for quick runs.

TTFT: seconds from sending the request to the first streamed chunk whose delta carries content,
reasoning_content or tool_calls; a role-only first chunk does not count (a server may send it
before prefill). A reply with no output at all counts the chunk carrying finish_reason.

"reusable" is the longest token prefix a request shares with any earlier request of the trace,
from the daemon's own /apply-template and /tokenize: what a perfect prefix cache could reuse on the
first pass. Targets, checked from each session's second request on: cache on and restart serve
>= 95 % of prompt tokens from the cache, and TTFT at the last request is within 2x of the second
request; with the cache off TTFT grows with the prompt. Traces that rewrite history
("check_targets": false) report the same figures without a verdict.

    python scripts/bench_agent.py [--model PATH | --preset small] [--trace NAME]... [--turns N]
        [--modes off,on,restart] [--off-every N] [--port N] [--serve-arg=--cache-ram-mb=4096]... [--json OUT]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import openai

REPO_ROOT = Path(__file__).resolve().parent.parent
TRACE_DIR = Path(__file__).resolve().parent / "traces"
MODES = ("off", "on", "restart")
TURN_KEYS = frozenset({"session", "append", "replace", "note", "max_tokens"})
CACHED_SHARE_TARGET = 0.95
TTFT_RATIO_TARGET = 2.0


# --- traces --------------------------------------------------------------------------------------


class TraceError(ValueError):
    """A trace file that does not follow the format (the message names the file, turn and field)."""


@dataclass(frozen=True)
class Turn:
    session: str
    number: int  # 1-based position within its session
    messages: list[dict]  # the full conversation the client sends
    max_tokens: int
    note: str = ""


@dataclass(frozen=True)
class Trace:
    name: str
    description: str
    tools: list[dict]
    turns: list[Turn]
    check_targets: bool = True


def load_trace(path: str | Path) -> Trace:
    """Read a trace file and expand its turns into full conversations."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise TraceError(f"{path}: cannot read trace: {exc}") from exc
    if not isinstance(raw, dict):
        raise TraceError(f"{path}: a trace must be a JSON object")
    for key, kind in (("name", str), ("description", str), ("tools", list), ("turns", list)):
        if not isinstance(raw.get(key), kind):
            raise TraceError(f"{path}: field {key!r} must be a {kind.__name__}")
    if not raw["turns"]:
        raise TraceError(f"{path}: no turns")
    return Trace(raw["name"], raw["description"], raw["tools"], expand_turns(raw["turns"], str(path)),
                 bool(raw.get("check_targets", True)))


def expand_turns(turns: list[Any], where: str = "trace") -> list[Turn]:
    """Each turn's request = the session's previous request, with `replace` applied, plus `append`."""
    history: dict[str, list[dict]] = {}
    out = []
    for i, turn in enumerate(turns, 1):
        at = f"{where}: turn {i}"
        if not isinstance(turn, dict):
            raise TraceError(f"{at}: must be an object")
        unknown = set(turn) - TURN_KEYS
        if unknown:
            raise TraceError(f"{at}: unknown fields {sorted(unknown)}")
        session = turn.get("session", "main")
        append, replace = turn.get("append"), turn.get("replace", {})
        max_tokens, note = turn.get("max_tokens"), turn.get("note", "")
        if not isinstance(session, str) or not isinstance(note, str):
            raise TraceError(f"{at}: 'session' and 'note' must be strings")
        if not isinstance(append, list) or not append or not all(isinstance(m, dict) for m in append):
            raise TraceError(f"{at}: 'append' must be a non-empty list of message objects")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise TraceError(f"{at}: 'max_tokens' must be a positive integer, got {max_tokens!r}")
        if not isinstance(replace, dict):
            raise TraceError(f"{at}: 'replace' must map message indices to messages")
        messages = list(history.get(session, []))
        for key, message in replace.items():
            if not key.isdigit() or int(key) >= len(messages):
                raise TraceError(f"{at}: 'replace' index {key!r} is not one of the {len(messages)} earlier messages")
            if not isinstance(message, dict):
                raise TraceError(f"{at}: 'replace' {key} must be a message object")
            messages[int(key)] = message
        messages += append
        history[session] = messages
        number = sum(t.session == session for t in out) + 1
        out.append(Turn(session, number, messages, max_tokens, note))
    return out


def trace_paths(names: list[str] | None) -> list[Path]:
    if not names:
        return sorted(TRACE_DIR.glob("*.json"))
    paths = [Path(n) if n.endswith(".json") else TRACE_DIR / f"{n}.json" for n in names]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        known = ", ".join(p.stem for p in sorted(TRACE_DIR.glob("*.json")))
        raise SystemExit(f"bench_agent: no trace {', '.join(missing)} (known: {known})")
    return paths


# --- the daemon ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_flags() -> str:
    """`agentd serve --help`, to find out which cache flags this daemon has."""
    result = subprocess.run([sys.executable, "-m", "agentd", "serve", "--help"], cwd=REPO_ROOT,
                            capture_output=True, text=True, env=_env(), timeout=120)
    return result.stdout


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    return env


class Daemon:
    """`agentd serve` as a child process in its own process group, so it can be stopped with
    everything it started, also when this script is interrupted."""

    def __init__(self, model: Path, port: int, args: list[str], log: Path):
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        command = [sys.executable, "-m", "agentd", "serve", "--model", str(model), "--host", "127.0.0.1",
                   "--port", str(port), *args]
        print(f"  starting: {' '.join(command[1:])}", file=sys.stderr)
        with log.open("ab") as out:
            self.proc = subprocess.Popen(command, cwd=REPO_ROOT, env=_env(), stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agentd serve exited with status {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(self.url + "/health", timeout=5) as response:
                    if response.status == 200:
                        return
            time.sleep(0.5)
        raise RuntimeError(f"agentd serve not healthy after {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM to the process group, SIGKILL after 30 s."""
        if self.proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(wait)
                return

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def post(self, path: str, body: dict) -> Any:
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=600) as response:
            return json.loads(response.read())


@contextlib.contextmanager
def running(model: Path, port: int | None, args: list[str], log: Path, timeout: float) -> Iterator[Daemon]:
    daemon = Daemon(model, port or free_port(), args, log)
    try:
        daemon.wait_ready(timeout)
        yield daemon
    finally:
        daemon.stop()


# --- replay --------------------------------------------------------------------------------------


@dataclass
class Result:
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    ttft: float | None = None
    seconds: float | None = None
    error: str = ""
    skipped: bool = False  # not replayed in this mode (see --off-every)


def prompt_ids(daemon: Daemon, trace: Trace, turns: list[Turn]) -> list[list[int]] | None:
    """Token ids of every request as the daemon renders it; None when it lacks the endpoints."""
    print(f"  rendering and tokenizing {len(turns)} requests for the reusable-prefix estimate", file=sys.stderr)
    ids = []
    try:
        for turn in turns:
            prompt = daemon.post("/apply-template", {"messages": turn.messages, "tools": trace.tools})["prompt"]
            ids.append(daemon.post("/tokenize", {"content": prompt})["tokens"])
    except (urllib.error.URLError, KeyError, ValueError) as exc:
        print(f"  warning: no reusable-prefix estimate (/apply-template or /tokenize failed: {exc})", file=sys.stderr)
        return None
    return ids


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix (binary search over slice comparisons, which run in C)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def reusable(ids: list[list[int]]) -> list[int]:
    return [max((common_prefix(x, earlier) for earlier in ids[:i]), default=0) for i, x in enumerate(ids)]


def warm_up(client: openai.OpenAI) -> None:
    """One tiny request first, so that the first measured one does not pay for page-faulting the
    model in; it shares no prefix with the traces beyond the first template token."""
    client.chat.completions.create(model="agentd", messages=[{"role": "user", "content": "warm-up"}], max_tokens=1)


def sampled(turns: list[Turn], every: int) -> set[int]:
    """Indices of the requests mode off replays: every `every`-th, plus each session's first, second
    and last (the TTFT comparison). Without a cache the requests are independent, so a sample shows
    the same growth as the full replay, in a fraction of the time."""
    keep = set(range(0, len(turns), every))
    for session in {t.session for t in turns}:
        mine = [i for i, t in enumerate(turns) if t.session == session]
        keep.update(mine[:2] + mine[-1:])
    return keep


def replay(client: openai.OpenAI, trace: Trace, turns: list[Turn], mode: str, keep: set[int]) -> list[Result]:
    results = []
    for i, turn in enumerate(turns, 1):
        if i - 1 not in keep:
            results.append(Result(skipped=True))
            continue
        result = request(client, trace.tools, turn)
        results.append(result)
        status = result.error or (f"prompt {result.prompt_tokens}, cached {result.cached_tokens}, "
                                  f"ttft {_num(result.ttft, 2)} s, total {_num(result.seconds, 2)} s")
        print(f"  [{mode}] {trace.name} {i}/{len(turns)} ({turn.session} #{turn.number}): {status}", file=sys.stderr)
    return results


def request(client: openai.OpenAI, tools: list[dict], turn: Turn) -> Result:
    result = Result()
    start = time.perf_counter()
    try:
        stream = client.chat.completions.create(
            model="agentd", messages=turn.messages, tools=tools, max_tokens=turn.max_tokens, temperature=0,
            stream=True, stream_options={"include_usage": True},
        )
        for chunk in stream:
            now = time.perf_counter() - start
            if chunk.usage is not None:
                result.prompt_tokens = chunk.usage.prompt_tokens
                details = chunk.usage.prompt_tokens_details
                result.cached_tokens = details.cached_tokens if details is not None else None
            for choice in chunk.choices:
                if result.ttft is None and (_has_output(choice.delta) or choice.finish_reason is not None):
                    result.ttft = now
    except openai.APIError as exc:
        result.error = f"error: {exc}"
    result.seconds = time.perf_counter() - start
    return result


def _has_output(delta: Any) -> bool:
    return bool(delta.content or delta.tool_calls or getattr(delta, "reasoning_content", None))


# --- report --------------------------------------------------------------------------------------


def _num(value: float | int | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if digits else str(value)


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def report(trace: Trace, turns: list[Turn], results: dict[str, list[Result]], reuse: list[int] | None) -> str:
    modes = [m for m in MODES if m in results]
    sessions = sorted({t.session for t in turns})
    notes = any(t.note for t in turns)
    head = ["turn"] + (["session"] if len(sessions) > 1 else []) + ["prompt tokens"] + (["reusable"] if reuse else [])
    head += [f"cached {m}" for m in modes] + [f"TTFT {m} s" for m in modes] + (["note"] if notes else [])
    align = ["---:" if h not in ("session", "note") else "---" for h in head]
    out = [f"## {trace.name} ({len(turns)} of {len(trace.turns)} requests)", "", trace.description, "",
           "| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    for i, turn in enumerate(turns):
        row = [str(i + 1)] + ([f"{turn.session} #{turn.number}"] if len(sessions) > 1 else [])
        row.append(_prompt_tokens([results[m][i] for m in modes]))
        row += [_num(reuse[i])] if reuse else []
        row += [_cell(results[m][i], _num(results[m][i].cached_tokens)) for m in modes]
        row += [_cell(results[m][i], _num(results[m][i].ttft, 2)) for m in modes]
        row += [turn.note] if notes else []
        out.append("| " + " | ".join(row) + " |")
    out += ["", *summary(trace, turns, results, reuse)]
    return "\n".join(out)


def _cell(result: Result, value: str) -> str:
    return "ERR" if result.error else "skip" if result.skipped else value


def _prompt_tokens(row: list[Result]) -> str:
    """The prompt size all modes agree on; a '*' marks modes that reported different sizes."""
    sizes = {r.prompt_tokens for r in row if r.prompt_tokens is not None}
    return "-" if not sizes else str(max(sizes)) + ("*" if len(sizes) > 1 else "")


def summary(trace: Trace, turns: list[Turn], results: dict[str, list[Result]], reuse: list[int] | None) -> list[str]:
    later = [i for i, t in enumerate(turns) if t.number > 1]
    verdict = trace.check_targets
    out = ["Cache reuse from each session's second request on:", "",
           "| mode | prompt tokens | cached tokens | cached share | lowest per request | target |",
           "|---|---:|---:|---:|---:|---|"]
    for mode, rows in results.items():
        replayed = [i for i in later if not rows[i].skipped]
        ok = [i for i in replayed if not rows[i].error and rows[i].prompt_tokens]
        prompt = sum(rows[i].prompt_tokens for i in ok)
        cached = sum(rows[i].cached_tokens or 0 for i in ok)
        lowest = min((100 * (rows[i].cached_tokens or 0) / rows[i].prompt_tokens for i in ok), default=None)
        target = "-"
        if mode != "off" and verdict and ok:
            target = f">= {CACHED_SHARE_TARGET:.0%}: " + ("PASS" if cached >= CACHED_SHARE_TARGET * prompt else "FAIL")
        errors = f" ({len(replayed) - len(ok)} failed)" if len(ok) < len(replayed) else ""
        errors += f" ({len(later) - len(replayed)} skipped)" if len(replayed) < len(later) else ""
        out.append(f"| {mode}{errors} | {prompt} | {cached} | {_pct(cached, prompt)} | "
                   f"{_num(lowest, 1)}{'%' if lowest is not None else ''} | {target} |")
    if reuse:
        prompt = sum(max(rows[i].prompt_tokens or 0 for rows in results.values()) for i in later)  # any mode that ran it
        shared = sum(reuse[i] for i in later)
        line = f"Ceiling on the first pass (tokens shared with an earlier request): {_pct(shared, prompt)}"
        if "on" in results:
            cached = sum(results["on"][i].cached_tokens or 0 for i in later if not results["on"][i].error)
            line += f"; mode on served {_pct(cached, shared)} of that from the cache"
        out += ["", line + "."]
    out += ["", "Time to first token, second vs last request of each session:", "",
            "| mode | session | prompt 2nd | prompt last | TTFT 2nd s | TTFT last s | ratio | target |",
            "|---|---|---:|---:|---:|---:|---:|---|"]
    for mode, rows in results.items():
        for session in sorted({t.session for t in turns}):
            mine = [i for i, t in enumerate(turns) if t.session == session]
            if len(mine) < 2:
                continue
            first, last = rows[mine[1]], rows[mine[-1]]
            ratio = last.ttft / first.ttft if first.ttft and last.ttft else None
            target = "-"
            if ratio is not None and verdict and len(mine) > 2:
                if mode == "off":
                    target = "grows with the prompt: " + ("yes" if ratio > 1 else "NO")
                else:
                    target = f"<= {TTFT_RATIO_TARGET:.0f}x: " + ("PASS" if ratio <= TTFT_RATIO_TARGET else "FAIL")
            cells = [mode, session, _num(first.prompt_tokens), _num(last.prompt_tokens), _num(first.ttft, 2),
                     _num(last.ttft, 2), f"{ratio:.2f}x" if ratio is not None else "-", target]
            out.append("| " + " | ".join(cells) + " |")
    if not verdict:
        out += ["", "No verdict: this trace rewrites history on purpose; compare the modes and the notes."]
    return out


# --- main ----------------------------------------------------------------------------------------


def default_model(preset: str) -> Path:
    """A synthetic f32 model of `preset`, written once into agentd's model cache directory."""
    from engine.synthetic import LAYOUT_VERSION, default_model_path, make_model

    path = default_model_path().parent / f"agentd-{preset}-f32-v{LAYOUT_VERSION}-bench.gguf"
    if not path.is_file():
        print(f"writing {path} ...", file=sys.stderr)
        path.parent.mkdir(parents=True, exist_ok=True)
        make_model(path, preset, qtype_mix="f32", progress=True)
    return path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="GGUF model (default: a synthetic model of --preset)")
    ap.add_argument("--preset", default="small", help="synthetic preset when --model is not given (default: small)")
    ap.add_argument("--trace", action="append", help="trace name or .json path; repeatable (default: all)")
    ap.add_argument("--turns", type=int, help="replay only the first N requests of each trace")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of off,on,restart")
    ap.add_argument("--port", type=int, help="port for the daemons (default: a free one each time)")
    ap.add_argument("--serve-arg", action="append", default=[], metavar="ARG",
                    help="extra argument for every `agentd serve`, e.g. --serve-arg=--cache-ram-mb=4096")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per request (default: %(default)s)")
    ap.add_argument("--start-timeout", type=float, default=600, help="seconds for a daemon to become healthy")
    ap.add_argument("--off-every", type=int, default=1, metavar="N",
                    help="mode off replays only every N-th request, plus each session's first, second and last "
                    "(default: %(default)s, all; without a cache the requests are independent)")
    ap.add_argument("--json", type=Path, help="also write all measurements to this JSON file")
    args = ap.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    if not modes or set(modes) - set(MODES):
        ap.error(f"--modes must be a comma-separated subset of {','.join(MODES)}")
    if "restart" in modes and "on" not in modes:
        ap.error("--modes restart needs 'on' as well: it restarts on the cache that mode 'on' filled")
    if args.turns is not None and args.turns < 1:
        ap.error("--turns must be at least 1")
    if args.off_every < 1:
        ap.error("--off-every must be at least 1")
    args.modes = [m for m in MODES if m in modes]
    return args


def cache_args(flags: str, mode: str, cache_dir: Path) -> list[str]:
    """Daemon arguments for `mode`, leaving out (with a warning) flags this daemon does not have."""
    wanted = ["--no-cache"] if mode == "off" else ["--cache-dir", str(cache_dir)]
    if wanted[0] in flags:
        return wanted
    print(f"  warning: `agentd serve` has no {wanted[0]} yet: mode '{mode}' runs with the daemon's default cache "
          "behaviour; the figures show what the server reports", file=sys.stderr)
    return []


def run_trace(trace: Trace, args: argparse.Namespace, model: Path, flags: str, work: Path) -> dict:
    turns = trace.turns[: args.turns]
    cache_dir = Path(tempfile.mkdtemp(prefix=f"cache-{trace.name}-", dir=work))
    results: dict[str, list[Result]] = {}
    reuse = None
    print(f"{trace.name}: {len(turns)} requests, modes {', '.join(args.modes)}", file=sys.stderr)
    for mode in args.modes:
        daemon_args = cache_args(flags, mode, cache_dir) + args.serve_arg
        with running(model, args.port, daemon_args, work / f"{trace.name}-{mode}.log", args.start_timeout) as daemon:
            if reuse is None:
                ids = prompt_ids(daemon, trace, turns)
                reuse = reusable(ids) if ids else []
            client = openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0, timeout=args.timeout)
            warm_up(client)
            keep = sampled(turns, args.off_every) if mode == "off" else set(range(len(turns)))
            results[mode] = replay(client, trace, turns, mode, keep)
    print(report(trace, turns, results, reuse or None) + "\n", flush=True)
    described = [{"session": t.session, "number": t.number, "messages": len(t.messages), "note": t.note} for t in turns]
    return {"trace": trace.name, "turns": described,
            "reusable": reuse, "results": {m: [asdict(r) for r in rs] for m, rs in results.items()}}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    traces = [load_trace(p) for p in trace_paths(args.trace)]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind through the finally blocks below
    model = args.model or default_model(args.preset)
    flags = serve_flags()
    work = Path(tempfile.mkdtemp(prefix="agentd-bench-agent-"))
    measured = []
    try:
        for trace in traces:
            measured.append(run_trace(trace, args, model, flags, work))
    except RuntimeError as exc:
        print(f"bench_agent: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench_agent: interrupted", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if args.json and measured:
            args.json.write_text(json.dumps({"model": str(model), "traces": measured}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
