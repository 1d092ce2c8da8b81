"""Hydra callback: at the end of a multirun, collect every job's rows into one table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from .tables import dedupe_rows, render_tables


class CollectResults(Callback):
    """Writes ``<sweep dir>/results.json`` (all rows, each job's meta) and ``results.md``; prints the table."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        files = sorted(p for p in sweep_dir.glob("*/results.json"))
        if not files:
            print(f"no job of the sweep in {sweep_dir} wrote results.json")
            return
        jobs = [json.loads(f.read_text()) for f in files]
        rows = dedupe_rows([r for j in jobs for r in j["rows"]], [str(f) for f, j in zip(files, jobs) for _ in j["rows"]])
        metas = [{"job_dir": str(f.parent), "model": j["meta"]["config"]["model"]["name"],
                  **{k: j["meta"].get(k) for k in ("device", "precision", "seed", "cache_keys", "timings_s",
                                                   "test_accuracy", "training", "versions")}}
                 for f, j in zip(files, jobs)]
        out = sweep_dir / "results.json"
        out.write_text(json.dumps({"meta": {"sweep_dir": str(sweep_dir), "jobs": metas}, "rows": rows},
                                  indent=1, default=str))
        table = render_tables(rows)
        (sweep_dir / "results.md").write_text(table)
        print(table)
        print(f"results: {out}")
