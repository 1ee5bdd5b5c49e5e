"""The scaled-down synthetic-versus-real protocol on LFW (docs/protocol.md), step by step and resumable.

The command line of synthface/synthetic_vs_real.py (the steps, their records and how a rerun skips
or resumes them: its docstring, which --help shows); recipe paths are relative to the repository root.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from synthface import synthetic_vs_real  # noqa: E402
from synthface.synthetic_vs_real import STEPS, ProtocolError, run_recipe  # noqa: E402

EXAMPLES = """
    python bench/protocol_lfw.py --recipe recipes/protocol-lfw-cpu.yaml --work runs/protocol-lfw
    python bench/protocol_lfw.py --work runs/protocol-lfw --steps evaluate-real   # one step (its inputs must be done)
    python bench/protocol_lfw.py --recipe my-protocol.yaml --work runs/protocol-lfw   # with `mixed: true` and `scale:` in it:
                                        # the real + synthetic arm and the scaling curve (docs/protocol.md)
"""


def main() -> int:
    ap = argparse.ArgumentParser(
        description=synthetic_vs_real.__doc__, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "protocol-lfw-cpu.yaml")
    ap.add_argument("--work", type=Path, required=True, help="output folder of every step")
    ap.add_argument("--steps", default="", help=f"comma-separated subset of: {', '.join(STEPS)}")
    args = ap.parse_args()
    only = [s.strip() for s in args.steps.split(",") if s.strip()] or None
    try:
        outcome = run_recipe(args.recipe, args.work, only, lambda m: print(m, flush=True), ROOT)
    except ProtocolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ran = [n for n, o in outcome.items() if o == "ran"]
    print(f"protocol: {len(ran)} step(s) ran, {len(outcome) - len(ran)} skipped; report: {args.work / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
