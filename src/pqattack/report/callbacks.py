"""Hydra callback: at the end of a multirun, collect every job's rows into one table."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from .tables import dedupe_rows, render_tables

#: how much older than the sweep's start a job's results.json may look and still be this sweep's (the clocks of a
#: shared file system's server and of the launching node may disagree by this much)
CLOCK_SLACK_S = 10.0


class CollectResults(Callback):
    """Writes ``<sweep dir>/results.json`` (all rows, each job's meta) and ``results.md``; prints the table.

    Only this sweep's jobs are collected: a job folder whose ``results.json`` was written before the sweep started
    (an earlier sweep into the same ``hydra.sweep.dir``) is left out, and named. An error while collecting is one
    line and exit code 2, with no sweep table left behind: Hydra turns a callback's exception into a warning, and
    the sweep would seem to have succeeded beside an earlier sweep's table."""

    def __init__(self) -> None:
        self.started: float | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.time()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        out, page = sweep_dir / "results.json", sweep_dir / "results.md"
        for stale in (out, page):
            stale.unlink(missing_ok=True)
        files = sorted(p for p in sweep_dir.glob("*/results.json"))
        if self.started is not None:
            earlier = [f for f in files if f.stat().st_mtime < self.started - CLOCK_SLACK_S]
            if earlier:
                print(f"left out {len(earlier)} job folder(s) of an earlier sweep into {sweep_dir}: "
                      f"{', '.join(f.parent.name for f in earlier)}")
                files = [f for f in files if f not in earlier]
        if not files:
            print(f"no job of the sweep in {sweep_dir} wrote results.json")
            return
        try:
            table = self.collect(sweep_dir, files, out)
        except Exception as exc:  # noqa: BLE001  Hydra would only warn: stop with the reason instead
            out.unlink(missing_ok=True)
            print(f"table error: the sweep's jobs finished (each job's results.json is in its folder), but their "
                  f"table could not be collected: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                  file=sys.stderr)
            sys.exit(2)
        page.write_text(table)
        print(table)
        print(f"results: {out}")

    @staticmethod
    def collect(sweep_dir: Path, files: list[Path], out: Path) -> str:
        """Write the sweep's ``results.json`` from the jobs' ``files``; the table of its rows."""
        jobs = [json.loads(f.read_text()) for f in files]
        rows = dedupe_rows([r for j in jobs for r in j["rows"]], [str(f) for f, j in zip(files, jobs) for _ in j["rows"]])
        metas = [{"job_dir": str(f.parent), "model": j["meta"]["config"]["model"]["name"],
                  **{k: j["meta"].get(k) for k in ("device", "precision", "seed", "cache_keys", "timings_s",
                                                   "test_accuracy", "training", "versions")},
                  **({"resumed": True} if j.get("resumed") else {})}
                 for f, j in zip(files, jobs)]
        table = render_tables(rows)
        out.write_text(json.dumps({"meta": {"sweep_dir": str(sweep_dir), "jobs": metas}, "rows": rows},
                                  indent=1, default=str))
        return table
