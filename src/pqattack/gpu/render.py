"""Back on the CPU: a GPU run's fetched records (``tools/gpu-run``'s ``records.tar.gz``) into the committed tables.

    tools/gpu-render <fetched folder | records.tar.gz>        # make gpu-render GPU_RECORDS=<fetched folder>

writes ``results/table{1,2,3,4}.md|json`` and ``results/beyond.md|json`` through ``python -m pqattack.report.collect``, ``results/gpu_run.md`` (the
run's stages, their status, wall times and estimates, the machine) and the GPU section of docs/benchmarks.md through
``python -m pqattack.bench --markdown``. Every number comes from the records; nothing is typed. The records are
unpacked into ``--unpack-to`` (default ``outputs/gpu-run/records``) so that the tables' sources stay readable.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]  # the checkout: src/pqattack/gpu/render.py
TABLES = {  # stage: (output name, title)
    "table1": ("table1", "Table 1, white-box attacks (CIFAR-10), full recipe"),
    "table2": ("table2", "Table 2, white-box attacks on PQN next to K-means (CIFAR-10), full recipe"),
    "table3": ("table3", "Table 3, bits transferability (CIFAR-10), full recipe"),
    "table4": ("table4", "Table 4, model transferability (CIFAR-10)"),
    "beyond": ("beyond", "Beyond PQ-AG, white-box attacks at the paper's budget (CIFAR-10), full recipe"),
    "defense": ("defense", "Defenses of the PQN target against the robust evaluation suite (CIFAR-10), full recipe"),
}


class RenderError(RuntimeError):
    """Records that cannot be rendered; the message says which and why."""


def unpack(source: Path, into: Path) -> Path:
    """The folder of the records: ``source`` unpacked (a records.tar.gz, or a fetched folder holding one), or
    ``source`` itself when it already holds the stage folders."""
    archive = source if source.is_file() else source / "records.tar.gz"
    if archive.is_file():
        shutil.rmtree(into, ignore_errors=True)
        into.mkdir(parents=True)
        with tarfile.open(archive) as tar:
            tar.extractall(into, filter="data")
        return into
    if (source / "run.json").is_file():
        return source
    raise RenderError(f"{source}: neither records.tar.gz nor a folder of a GPU run's records (run.json)")


def machine_text(env: dict[str, Any]) -> str:
    if env.get("gpu"):
        return (f"{env['gpu']} (driver {env.get('driver') or '?'}, {env.get('gpu_total_gib')} GiB), torch "
                f"{env.get('torch')}, CUDA {env.get('cuda')}, Python {env.get('python')}")
    return f"CPU ({env.get('cpu_count')} cores), torch {env.get('torch')}, Python {env.get('python')}"


def job_configs(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text())["meta"]["config"] for p in sorted(folder.rglob("results.json"))
            if "config" in json.loads(p.read_text()).get("meta", {})]


def stage_note(status: dict[str, Any]) -> str:
    """What the title says about a stage that did not finish."""
    if status["status"] == "ok":
        return ""
    done = sum(c.get("jobs_found") or 0 for c in status["commands"])
    planned = sum(c.get("jobs") or 0 for c in status["commands"])
    return f" (incomplete: {done} of {planned} jobs; {status['status']}: {status.get('reason') or 'see gpu_run.md'})"


def render_table(records: Path, stage: str, results: Path, env: dict[str, Any]) -> Path | None:
    """One table through ``python -m pqattack.report.collect``; None when the stage left no job records."""
    status = json.loads((records / stage / "status.json").read_text())
    sweeps = [records / stage / c["name"] for c in status["commands"] if c.get("jobs")
              and (records / stage / c["name"]).is_dir()]
    configs = [c for s in sweeps for c in job_configs(s)]
    if not configs:
        return None
    name, title = TABLES[stage]
    epochs = sorted({int(c["trainer"]["max_epochs"]) for c in configs})
    if stage == "table4":
        title += f", backbones trained {'/'.join(map(str, epochs))} epoch{'s' if epochs != [1] else ''} (the " \
                 f"recipe's is 40)"
    title += f"; {machine_text(env)}{stage_note(status)}"
    command = "; ".join("python " + " ".join(c["argv"]) for c in status["commands"] if c.get("jobs") and "argv" in c)
    proc = subprocess.run([sys.executable, "-m", "pqattack.report.collect", *map(str, sweeps), "--out",
                           str(results / name), "--title", title, "--command", command], cwd=REPO, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise RenderError(f"report.collect for {stage} failed:\n{proc.stderr[-3000:]}")
    return results / f"{name}.md"


def bench_document(records: Path) -> dict[str, Any] | None:
    """The bench stage's JSON, with the compile figure of ``bench_compile`` added when that stage ran."""
    path = records / "bench" / "bench.json"
    if not path.is_file():
        return None
    doc = json.loads(path.read_text())
    extra = records / "bench_compile" / "bench.json"
    if extra.is_file():
        more = json.loads(extra.read_text())
        doc["records"] += more["records"]
        doc["command"] += f"; {more['command']}"
    return doc


def run_summary(records: Path, env: dict[str, Any]) -> str:
    run = json.loads((records / "run.json").read_text())
    lines = [f"# The GPU run ({run['mode']} mode)", "", f"Machine: {machine_text(env)}.", "",
             f"Deadline {run['deadline_s']:.0f} s; the run took {run['elapsed_s']:.0f} s (tools/gpu-run, records "
             f"unpacked in `{records}`).", "", "| stage | status | wall (s) | estimate (s) | note |", "|---|---|---|---|---|"]
    for name, st in run["stages"].items():
        commands = json.loads((records / name / "status.json").read_text())["commands"]
        estimates = [c["estimate_s"] for c in commands if c.get("estimate_s") is not None]
        estimate = f"{sum(estimates):.0f}" if estimates else "-"
        lines.append(f"| {name} | {st['status']} | {st['wall_s']:.1f} | {estimate} | {st.get('reason') or ''} |")
    return "\n".join(lines) + "\n"


def render(source: Path, results: Path, benchmarks: Path, unpack_to: Path, allow_tiny: bool = False) -> list[Path]:
    records = unpack(source, unpack_to)
    run = json.loads((records / "run.json").read_text())
    if run["mode"] == "tiny" and not allow_tiny:
        raise RenderError(f"{source}: records of a --tiny run (toy sizes on a CPU); render them only with --allow-tiny "
                          f"into folders of their own (--results, --benchmarks)")
    env = json.loads((records / "environment.json").read_text())
    results.mkdir(parents=True, exist_ok=True)
    written = []
    for stage in TABLES:
        if (records / stage / "status.json").is_file():
            md = render_table(records, stage, results, env)
            if md is not None:
                written.append(md)
    (results / "gpu_run.md").write_text(run_summary(records, env))
    written.append(results / "gpu_run.md")
    doc = bench_document(records)
    if doc is not None:
        merged = records / "bench-merged.json"
        merged.write_text(json.dumps(doc, indent=1))
        proc = subprocess.run([sys.executable, "-m", "pqattack.bench", "--markdown", str(merged), "--update",
                               str(benchmarks)], cwd=REPO, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RenderError(f"bench --markdown failed:\n{proc.stderr[-3000:]}")
        written.append(benchmarks)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tools/gpu-render", description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="the fetched folder (holding records.tar.gz), the archive, or its unpacked folder")
    p.add_argument("--results", default=str(REPO / "results"), help="where the tables go (default %(default)s)")
    p.add_argument("--benchmarks", default=str(REPO / "docs" / "benchmarks.md"),
                   help="the document whose GPU section is rewritten (default %(default)s)")
    p.add_argument("--unpack-to", default=str(REPO / "outputs" / "gpu-run" / "records"))
    p.add_argument("--allow-tiny", action="store_true", help="render a --tiny run's records (tests)")
    a = p.parse_args(argv)
    try:
        for path in render(Path(a.source), Path(a.results), Path(a.benchmarks), Path(a.unpack_to), a.allow_tiny):
            print(f"wrote {path}")
    except RenderError as exc:
        print(f"gpu-render: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
