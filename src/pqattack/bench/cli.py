"""The command: ``--figure`` runs one figure in this process (the child); without it, each figure runs in a child
process of its own and the records are collected (the parent); ``--markdown`` renders a file of records."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import UsageError
from ..runtime import versions
from .attack import figure_attack, figure_attack_losses
from .jobs import figure_demo, figure_sweep_memory, figure_table1
from .recipe import derive_recipe, figure_train_compile, figures_from_table1, table1_status
from .records import TARGETS, device_label, line, markdown, read_document, target_of, update_document
from .retrieval import figure_retrieval_1m, figure_retrieval_9k
from .training import figure_train, figure_train_recipe
from .workloads import REPO, SIZES

FIGURES: dict[str, Callable[[torch.device, dict[str, Any]], list[dict[str, Any]]]] = {
    "train_resnet18": lambda d, s: figure_train("resnet18", d, s),
    "train_vgg16": lambda d, s: figure_train("vgg16", d, s),
    "train_recipe": figure_train_recipe,
    "train_compile": figure_train_compile,
    "attack_resnet18": lambda d, s: figure_attack("resnet18", d, s),
    "attack_vgg16": lambda d, s: figure_attack("vgg16", d, s),
    "attack_losses": figure_attack_losses,
    "retrieval_9k_sdc": lambda d, s: figure_retrieval_9k("sdc", d, s),
    "retrieval_9k_adc": lambda d, s: figure_retrieval_9k("adc", d, s),
    "retrieval_1m_adc": figure_retrieval_1m,
    "table1": figure_table1,
    "demo": figure_demo,
    "demo_bf16": lambda d, s: figure_demo(d, s, ["precision=bf16"], "demo_bf16"),
    "sweep_memory": figure_sweep_memory,
}
DEFAULT_FIGURES = [f for f in FIGURES if f not in ("demo_bf16", "train_compile")]


def child(name: str, device: torch.device, quick: bool, result_file: Path) -> None:
    sz = SIZES["quick" if quick else device.type]
    records = FIGURES[name](device, sz)
    result_file.write_text(json.dumps(records))


def bench_command(device: str, figures: list[str], quick: bool) -> str:
    return f"python -m pqattack.bench --device {device} --figures {','.join(figures)}" + (" --quick" if quick else "")



def check_run(args: argparse.Namespace) -> tuple[list[str], Path]:
    """The figures to run and the file to write; a ``UsageError`` for any argument that would stop the run late."""
    figures = args.figures.split(",") if args.figures else DEFAULT_FIGURES
    unknown = [f for f in figures if f not in FIGURES]
    if unknown:
        raise UsageError(f"--figures: unknown figure(s) {', '.join(unknown)}; choose from {', '.join(FIGURES)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: CUDA is not available here")
    if args.update:
        raise UsageError(f"--update {args.update}: only with --markdown JSON (it writes that file's records into "
                         f"{args.update}); a run writes --out, then --markdown <out> --update {args.update}")
    out = Path(args.out or REPO / "outputs" / "bench" / f"{args.device}.json")
    if out.is_dir():
        raise UsageError(f"--out {out}: a folder; give the JSON file to write (e.g. {out / (args.device + '.json')})")
    if args.table1_run:
        table1_status(Path(args.table1_run))
    return figures, out


def parent(args: argparse.Namespace) -> int:
    device = args.device
    figures, out = check_run(args)
    out.parent.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device)
    doc = {"device": device, "machine": device_label(dev), "date": _dt.datetime.now().astimezone().isoformat(
        timespec="seconds"), "command": "make bench" if device == "cpu" and not args.figures and not args.quick
        else bench_command(device, figures, args.quick), "quick": args.quick, "versions": versions(), "records": []}
    failed = []
    t_all = time.perf_counter()
    for name in figures:
        derived = derive_recipe(doc["records"], device) if name == "train_recipe" and device == "cpu" else None
        if derived is not None:
            derived.update(target=target_of("train_recipe", device)[0], meets_target=None,
                           target_spec=dict(zip(("device", "op", "value", "unit"), TARGETS["train_recipe"])),
                           command=derived["notes"]["from_command"], device=doc["machine"], versions=doc["versions"])
            doc["records"].append(derived)
            print(line(derived), flush=True)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            result = Path(tmp) / "records.json"
            cmd = [sys.executable, "-m", "pqattack.bench", "--figure", name, "--device", device,
                   "--result-file", str(result), *(["--quick"] if args.quick else [])]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                                  env={**os.environ, "PYTHONWARNINGS": "ignore"})
            wall = time.perf_counter() - t0
            if proc.returncode != 0 or not result.is_file():
                failed.append(name)
                print(f"{name}: FAILED ({proc.returncode})\n{proc.stdout[-1500:]}\n{proc.stderr[-4000:]}",
                      file=sys.stderr)
                continue
            records = json.loads(result.read_text())
        for rec in records:
            text, check = target_of(rec["figure"], device)
            rec["target"] = text
            if rec["figure"] in TARGETS:
                rec["target_spec"] = dict(zip(("device", "op", "value", "unit"), TARGETS[rec["figure"]]))
            rec["meets_target"] = None if check is None or rec["fast_value"] is None else bool(check(rec["fast_value"]))
            rec["command"] = bench_command(device, [name], args.quick)
            rec["device"] = doc["machine"]
            rec["versions"] = doc["versions"]
            rec["notes"]["figure_process_wall_s"] = round(wall, 1)
            doc["records"].append(rec)
            print(line(rec), flush=True)
        out.write_text(json.dumps(doc, indent=1))
    if args.table1_run:
        for rec in figures_from_table1(Path(args.table1_run), doc["records"]):
            text, check = target_of(rec["figure"], device)
            rec.update(target=text, meets_target=None if check is None or rec["fast_value"] is None
                       else bool(check(rec["fast_value"])), device=doc["machine"], versions=doc["versions"],
                       command=rec["notes"].get("command") or f"python -m pqattack experiment=table1 "
                       f"(training in the records of {args.table1_run})")
            if rec["figure"] in TARGETS:
                rec["target_spec"] = dict(zip(("device", "op", "value", "unit"), TARGETS[rec["figure"]]))
            doc["records"].append(rec)
            print(line(rec), flush=True)
    doc["total_wall_s"] = round(time.perf_counter() - t_all, 1)
    out.write_text(json.dumps(doc, indent=1))
    print(f"wrote {out} ({doc['total_wall_s']} s)")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    usage = sys.modules[__package__].__doc__ or ""
    p = argparse.ArgumentParser(prog="python -m pqattack.bench", description=usage.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--figures", help=f"comma-separated subset of: {', '.join(FIGURES)} (default: all but "
                   f"{', '.join(f for f in FIGURES if f not in DEFAULT_FIGURES)})")
    p.add_argument("--quick", action="store_true", help="tiny sizes (for the test)")
    p.add_argument("--out", help="JSON output (default outputs/bench/<device>.json)")
    p.add_argument("--table1-run", metavar="DIR", help="also record the recipe's training times and Table 1's wall "
                   "time from a table1 run's records (tools/gpu-run's stage folder) instead of running them again")
    p.add_argument("--markdown", metavar="JSON", help="render a JSON file's records as markdown and exit")
    p.add_argument("--update", metavar="DOC", help="only with --markdown: write the section into DOC between its "
                   "markers instead of printing it")
    p.add_argument("--figure", help=argparse.SUPPRESS)
    p.add_argument("--result-file", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        if args.markdown:
            doc = read_document(Path(args.markdown))
            if args.update and Path(args.update).is_dir():
                raise UsageError(f"--update {args.update}: a folder; give the markdown document to write into")
            if args.update:
                update_document(Path(args.update), doc)
            else:
                sys.stdout.write(markdown(doc))
            return 0
        if args.figure:
            child(args.figure, torch.device(args.device), args.quick, Path(args.result_file))
            return 0
        return parent(args)
    except UsageError as exc:  # before any figure runs
        print(f"{exc.kind} error: {exc}", file=sys.stderr)
        return exc.exit_code

