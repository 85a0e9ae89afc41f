"""Run the real Codex CLI against the daemon: `codex exec` must finish its turn with exit status 0.

    npm install --prefix /tmp/codex @openai/codex@0.171.0
    python scripts/codex_smoke.py --codex /tmp/codex/node_modules/.bin/codex

Serves a tiny synthetic model (random weights, the real Qwen3.5 vocabulary and template) on a free
port, writes a throwaway CODEX_HOME/config.toml with a model provider (`wire_api = "responses"`,
clients/codex.md), runs `codex exec --json` in an empty folder and prints what Codex reported
and what the daemon logged. Exit status: Codex's.

A random model never ends its turn by itself (`<|im_end|>` is one token in 250k), and a turn cut
by the output limit is `response.incomplete`, which Codex fails. So the model served is the tiny
one with its ending made likely: a constant component in every token embedding, read by
`<|im_end|>`'s row of an untied output matrix alone, raises that token's logit at every step. It
still writes a few random tokens first (reasoning, or an answer with `--no-think`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CONFIG = """\
model = "agentd"
model_provider = "agentd"
check_for_update_on_startup = false
{effort}
[model_providers.agentd]
name = "agentd"
base_url = "http://127.0.0.1:{port}/v1"
wire_api = "responses"
env_key = "AGENTD_API_KEY"
request_max_retries = 1
stream_max_retries = 1

[analytics]
enabled = false
[feedback]
enabled = false
[otel]
exporter = "none"
[history]
persistence = "none"
[features]
plugins = false
remote_plugin = false
plugin_sharing = false
apps = false
"""
ENDING_EMBEDDING = 20.0  # the constant component every token embedding gets (dimension 0)
ENDING_WEIGHT = 1.0  # <|im_end|>'s output weight on it: a few tokens before the end, mostly


def ending_model(path: Path) -> Path:
    """The tiny synthetic model, untied, with `<|im_end|>` made likely at every step."""
    import gguf

    from engine import load_model
    from engine.synthetic import make_model

    make_model(path, "tiny", seed=0, qtype_mix="f32", tied=False)
    end_id = load_model(path).tokenizer.encode("<|im_end|>")[0]
    reader = gguf.GGUFReader(path, "r+")
    tensors = {t.name: t.data for t in reader.tensors}
    tensors["token_embd.weight"][:, 0] = ENDING_EMBEDDING
    tensors["output.weight"][:, 0] = 0.0
    tensors["output.weight"][end_id, 0] = ENDING_WEIGHT
    del tensors, reader  # flushes the memory map
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(port: int, daemon: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise SystemExit(f"the daemon exited with status {daemon.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit("the daemon did not become healthy in time")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--codex", default=shutil.which("codex"), help="the codex binary (default: on PATH)")
    parser.add_argument("--prompt", default="list the files here")
    parser.add_argument("--no-think", action="store_true", help='model_reasoning_effort = "none": thinking off')
    parser.add_argument("--timeout", type=float, default=600, help="seconds for codex exec")
    args = parser.parse_args(argv)
    if not args.codex or not Path(args.codex).exists():
        parser.error("codex not found: npm install @openai/codex@0.171.0 and pass --codex")
    root = Path(tempfile.mkdtemp(prefix="agentd-codex-"))
    codex_home, work = root / "codex-home", root / "work"
    codex_home.mkdir()
    work.mkdir()
    for name in ("a.txt", "b.py", "c.md"):
        (work / name).write_text(f"{name}\n")
    port = free_port()
    effort = 'model_reasoning_effort = "none"\n' if args.no_think else ""
    (codex_home / "config.toml").write_text(CONFIG.format(port=port, effort=effort))
    model = ending_model(root / "tiny-ending.gguf")
    log = open(root / "daemon.log", "w+")
    repo = Path(__file__).resolve().parent.parent
    daemon = subprocess.Popen(
        [sys.executable, "-m", "agentd", "serve", "--model", str(model), "--model-name", "agentd",
         "--port", str(port), "--cache-dir", str(root / "cache")],
        cwd=repo, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_healthy(port, daemon, 300)
        env = {**os.environ, "CODEX_HOME": str(codex_home), "AGENTD_API_KEY": "x"}
        started = time.monotonic()
        codex = subprocess.run(
            [args.codex, "exec", "--json", "--skip-git-repo-check", "-C", str(work), args.prompt],
            env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=args.timeout,
        )  # fmt: skip
        seconds = time.monotonic() - started
    finally:
        daemon.terminate()
        daemon.wait(30)
    print(f"codex exec: exit status {codex.returncode} in {seconds:.1f} s")
    for line in codex.stdout.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            print("  " + line)
            continue
        print("  " + json.dumps(event, ensure_ascii=False)[:300])
    if codex.stderr.strip():
        print("codex stderr:\n  " + "\n  ".join(codex.stderr.strip().splitlines()[-15:]))
    log.seek(0)
    requests = [line.strip() for line in log if "endpoint=responses" in line or "ERROR" in line]
    print(f"daemon: {len(requests)} Responses requests\n  " + "\n  ".join(requests))
    shutil.rmtree(root, ignore_errors=True)
    return codex.returncode


if __name__ == "__main__":
    sys.exit(main())
