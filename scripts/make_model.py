"""Write a synthetic Qwen3.5 GGUF model: python scripts/make_model.py --preset tiny --qtype q8_0 OUT.gguf"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.gguf_writer import QTYPE_MIXES
from engine.synthetic import PRESETS, make_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path, help="output .gguf path")
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--qtype", default="f32", choices=QTYPE_MIXES, help="tensor type mix")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--moe", action="store_true", help="use the preset's MoE twin (tiny -> tiny-moe)")
    parser.add_argument("--mtp", action="store_true", help="append one MTP (nextn) block")
    tying = parser.add_mutually_exclusive_group()
    tying.add_argument("--tied", dest="tied", action="store_true", default=None, help="reuse token_embd as output")
    tying.add_argument("--untied", dest="tied", action="store_false", help="write a separate output.weight")
    args = parser.parse_args(argv)
    moe_twin = args.moe and not PRESETS[args.preset].moe
    preset = f"{args.preset}-moe" if moe_twin else args.preset
    if preset not in PRESETS:
        parser.error(f"preset {args.preset!r} has no MoE twin (MoE presets: "
                     f"{', '.join(p for p, c in PRESETS.items() if c.moe)})")
    path = make_model(args.out, preset, seed=args.seed, qtype_mix=args.qtype, with_mtp=args.mtp,
                      tied=args.tied, progress=True)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
