"""``python -m pqattack.report <run or sweep folders, or results.json files> --out <folder>``: the reproduction
report (``index.md`` and PNG figures); ``--wandb`` also logs its tables and figures to a wandb run."""

from __future__ import annotations

import argparse
import shlex
import sys

from .build import build_report
from .tables import TableError


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m pqattack.report", description=__doc__)
    p.add_argument("sources", nargs="+", help="run folders, sweep folders or results.json files")
    p.add_argument("--out", required=True, help="the report's folder (index.md, *.png, report.json)")
    p.add_argument("--cache", default=None, help="artifact cache folder (default: the one each job recorded)")
    p.add_argument("--model", default=None, help="the model of the artifact figures (default: picked)")
    p.add_argument("--bits", type=int, default=None, help="the code length of the artifact figures (default: 16 "
                   "if run, else picked)")
    p.add_argument("--wandb", action="store_true", help="also log tables and figures to wandb (WANDB_MODE, "
                   "default offline)")
    p.add_argument("--stand-in", action="append", default=[], metavar="OURS=PAPER",
                   help="our model OURS fills the paper model PAPER's cells, in tables of their own whose headings "
                        "say so (e.g. fastnet=vgg16); repeatable")
    a = p.parse_args(argv)
    stand_ins = {}
    for item in a.stand_in:
        ours, sep, paper = item.partition("=")
        if not (sep and ours and paper):
            p.error(f"--stand-in {item!r}: expected OURS=PAPER, e.g. fastnet=vgg16")
        stand_ins[ours] = paper
    try:
        index = build_report(a.sources, a.out, a.cache, a.model, a.bits, a.wandb,
                             command=shlex.join(["python", "-m", "pqattack.report", *argv]), stand_ins=stand_ins)
    except (FileNotFoundError, TableError) as exc:
        print(f"report error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"report: {index}")


if __name__ == "__main__":
    main()
