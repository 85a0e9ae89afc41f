"""agentd: a local inference daemon for Qwen3.5 hybrid models (generate, inspect, serve, cache)."""

from __future__ import annotations

import argparse
import sqlite3
import sys

from engine.config import ModelFormatError


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate", help="stream the completion of a chat prompt to stdout",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )  # fmt: skip
    p.add_argument("prompt", help="the user message")
    p.add_argument("--model", help="GGUF file (default: the embedded default model)")
    p.add_argument("--max-tokens", type=int, default=256, help="tokens to generate at most")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (0: greedy)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass")
    p.add_argument("--top-k", type=int, default=20, help="sample among the K likeliest tokens (0: all)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (None: random)")
    p.add_argument("--no-think", action="store_true", help="render the prompt with thinking disabled")
    from agentd.serve_cli import add_engine_args

    add_engine_args(p)
    p.set_defaults(run=_run_generate)


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="print a GGUF model's architecture, tensors and state sizes")
    p.add_argument("path")
    p.set_defaults(run=_run_inspect)


def _add_cache(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cache", help="inspect or clear the on-disk session cache")
    p.add_argument("action", choices=["stats", "ls", "clear"])
    p.add_argument("--cache-dir", help="cache directory (default: ~/.cache/agentd/sessions)")
    p.add_argument("--force", action="store_true", help="with clear: delete the database files (also a damaged one)")
    p.set_defaults(run=_run_cache)


def _run_cache(args: argparse.Namespace) -> int:
    from pathlib import Path

    from agentd.prefix_cache import default_cache_dir
    from cache import admin

    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    if args.action == "clear" and args.force:
        print("removed " + (", ".join(map(str, admin.remove(cache_dir))) or "nothing"))
    elif args.action == "clear":
        print(f"removed {admin.clear(cache_dir)} checkpoints from {cache_dir}")
    elif args.action == "stats":
        for row in admin.summary(cache_dir) or [{}]:
            print("  ".join(f"{k}={v}" for k, v in row.items()) or "empty")
    else:
        print(f"{'model':<14} {'tokens':>8} {'state bytes':>12}  key")
        for e in admin.entries(cache_dir):
            print(f"{e['fingerprint'][:12]:<14} {e['num_tokens']:>8} {e['state_bytes']:>12}  {e['key'][:16]}")
    return 0


def _model_path(arg: str | None) -> str:
    if arg:
        return arg
    from engine.synthetic import demo_model_notice, ensure_default_model

    def say(line: str) -> None:
        print(f"agentd: {line}", file=sys.stderr, flush=True)

    path = ensure_default_model(progress=True, say=say)
    say(demo_model_notice(path, "agentd generate"))
    return str(path)


def _run_generate(args: argparse.Namespace) -> int:
    from engine import load_model
    from engine.generate import generate
    from engine.sampling import SamplingParams

    params = SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed)
    params.validate()
    if args.max_tokens < 1:
        raise ValueError("--max-tokens must be at least 1")
    model = load_model(_model_path(args.model), progress=True, backend=args.backend, threads=args.threads)
    prompt = model.chat_template.render_prompt(
        [{"role": "user", "content": args.prompt}],
        add_generation_prompt=True,
        literal=model.tokenizer.added_texts,  # PROMPT is text, as message content is in `serve`
        enable_thinking=not args.no_think,
    )
    decoder = model.tokenizer.stream_decoder()
    for token in generate(model, model.tokenizer.encode(prompt.text, prompt.literal), params, args.max_tokens):
        sys.stdout.write(decoder.push(token))
        sys.stdout.flush()
    sys.stdout.write(decoder.flush() + "\n")
    return 0


def _run_inspect(args: argparse.Namespace) -> int:
    from engine.inspect import describe

    print(describe(args.path))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agentd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    _add_inspect(sub)
    _add_cache(sub)
    from agentd import serve_cli

    serve_cli.add_parser(sub)
    sub.choices["serve"].set_defaults(run=serve_cli.run)
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (ModelFormatError, ValueError, OSError, sqlite3.Error) as e:
        print(f"agentd: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
