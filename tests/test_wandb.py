"""``logger=wandb`` (offline): a tiny real sweep through ``python -m pqattack -m``, and what its runs' files hold: the
sweep's group, the resolved config, the training curves, the results table, the precision-recall figure and the
clean / adversarial / perturbation images of a few queries. The ``.wandb`` file is read with wandb's own protobuf
schema (``Record``), in LevelDB's log format, the format wandb writes it in."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

from pqattack.loggers import PANEL_QUERIES
from pqattack.report.figures import pixel_size

from .conftest import TINY, load_results, run_cli

BLOCK = 32768  # LevelDB log block; a record's 7-byte header (crc32, length, type) never straddles two blocks


def wandb_records(path: Path) -> Iterator:
    """The records of a ``run-*.wandb`` file: a 7-byte header (``:W&B``, a key, the version), then LevelDB log
    chunks (type 1 full, 2 first, 3 middle, 4 last) joined into ``Record`` protobufs."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, parts = 7, b""
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # the block's tail is padding
            pos += BLOCK - pos % BLOCK
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        parts += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            parts = b""
            yield record


class OfflineRun:
    """One offline run folder: its records by kind, its config and history, its media files."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.records: dict[str, list] = {}
        for r in wandb_records(next(folder.glob("run-*.wandb"))):
            self.records.setdefault(r.WhichOneof("record_type"), []).append(r)
        self.config = {i.key: json.loads(i.value_json) for r in self.records.get("config", []) for i in r.config.update}
        self.steps = [{"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item}
                      for r in self.records.get("history", [])]
        self.history = {k: v for step in self.steps for k, v in step.items()}  # the last value of each key

    def images(self, key: str) -> list[np.ndarray]:
        """The images logged under ``key``, in their order (``<key>/filenames``)."""
        return [np.asarray(Image.open(self.folder / "files" / f).convert("RGB"), dtype=np.int16)
                for f in self.history[f"{key}/filenames"]]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two jobs of one sweep (basic, aod) on a fresh cache: the first trains the backbone, the second loads it."""
    tmp = tmp_path_factory.mktemp("wandb")
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", **{f"WANDB_{d}_DIR": str(tmp / "wandb-home" / d.lower())
                                                               for d in ("CACHE", "CONFIG", "DATA")},
           "WANDB_DIR": str(tmp / "wandb-home")}
    run_cli(["-m", *TINY, "attack=basic,aod", "logger=wandb", "hydra.sweep.dir=sweeps/attack-sweep"], tmp,
            tmp / "cache", env=env)
    return tmp / "sweeps" / "attack-sweep"


def job_runs(sweep: Path) -> list[tuple[dict, OfflineRun]]:
    jobs = sorted(p.parent for p in sweep.glob("*/results.json"))
    out = []
    for job in jobs:
        runs = list((job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, f"{job}: {runs}"
        out.append((load_results(job / "results.json"), OfflineRun(runs[0])))
    return out


def test_runs_of_a_sweep_share_its_group_and_hold_their_config(sweep: Path) -> None:
    runs = job_runs(sweep)
    assert len(runs) == 2
    for res, run in runs:
        (header,) = run.records["run"]
        assert header.run.run_group == "attack-sweep"
        config = res["meta"]["config"]
        for key in ("model", "dataset", "quantizer", "attack", "trainer", "eval"):
            assert run.config[key] == config[key], key
        assert run.config["bits"] == 16 and run.config["attack"]["name"] in ("basic", "aod")
        assert run.records.get("exit"), "the run was not finished"


def test_training_curves_of_the_job_that_trained(sweep: Path) -> None:
    (trained, run), (loaded, other) = job_runs(sweep)
    assert any(b.startswith("checkpoint/") for b in trained["meta"]["cache_builds"])
    assert not any(b.startswith("checkpoint/") for b in loaded["meta"]["cache_builds"])
    epochs = [step for step in run.steps if "train/loss_epoch" in step]
    assert [step["epoch"] for step in epochs] == [0, 1]  # trainer.max_epochs=2
    assert "train/acc" in run.history and "train/loss_epoch" not in other.history


def test_results_table_figure_and_query_images(sweep: Path) -> None:
    for res, run in job_runs(sweep):
        table = json.loads(next(run.folder.glob("files/media/table/results_*.table.json")).read_text())
        cols = table["columns"]
        logged = {(row[cols.index("attack")], row[cols.index("system")]): row[cols.index("map")]
                  for row in table["data"]}
        assert logged == {(r["attack"], r["system"]): r["map"] for r in res["rows"]}
        assert run.history["results/_type"] == "table-file" and run.records.get("artifact")
        for r in res["rows"]:
            assert run.history[f"map/{r['attack']}/{r['system']}"] == pytest.approx(r["map"])

        (figure,) = run.images("pr_curves")
        assert figure.shape[:2] == pixel_size("pr_curves")[::-1]

        clean, adversarial, perturbation = (run.images(f"queries/{k}") for k in ("clean", "adversarial",
                                                                                   "perturbation"))
        assert len(clean) == len(adversarial) == len(perturbation) == PANEL_QUERIES
        captions = run.history["queries/clean/captions"]
        assert captions[0].startswith("query 0 (") and run.history["queries/adversarial/captions"] == captions
        eps = res["meta"]["config"]["attack"]["eps"]
        amplify = 0.5 / eps
        for x, adv, p in zip(clean, adversarial, perturbation):
            delta = adv - x
            assert np.abs(delta).max() <= round(eps * 255) and np.abs(delta).max() > 0  # the L-inf budget, 8-bit
            expected = np.clip(delta / 255 * amplify + 0.5, 0, 1) * 255
            assert np.abs(p - expected).max() <= 1.0  # grey 0.5 plus the amplified perturbation
