"""The run's Lightning loggers, built from ``conf/logger`` with ``hydra.utils.instantiate``, and what a job sends them
at its end: one metric per attack and system; to a logger that takes media (wandb), also the results table, the
precision-recall curves (the report's Fig. 5) and the clean and adversarial images and amplified perturbations of a
few queries. The training curves reach them through Lightning (``training.fit``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from .config import JobConfig, container
from .data import RetrievalData
from .quant import PQIndex

PANEL_QUERIES = 4  # queries in the image panel
MAX_RANKED = 2 ** 24  # (query, item) pairs ranked for the precision-recall curves: queries are taken up to this


def make_loggers(cfg: DictConfig, output_dir: Path) -> list:
    """Every logger of ``cfg.logger`` (a ``_target_`` and its settings; ``save_dir`` null: ``output_dir``); a logger
    that takes media also gets the resolved config."""
    loggers = [instantiate(node, save_dir=node.get("save_dir") or str(output_dir))
               for node in (cfg.get("logger") or {}).values() if node is not None]
    for lg in loggers:
        if takes_media(lg):
            lg.log_hyperparams(container(cfg))
    return loggers


def finish_loggers(loggers: list, status: str) -> None:
    """Close every logger, on success and on failure (wandb: its run's files are flushed and the run ended)."""
    for lg in loggers:
        lg.finalize(status)
        if takes_media(lg):
            lg.experiment.finish(exit_code=0 if status == "success" else 1)


def takes_media(logger: Any) -> bool:
    """Whether ``logger`` takes tables and images (Lightning's WandbLogger)."""
    return hasattr(logger, "log_table") and hasattr(logger, "log_image")


def sweep_group() -> str | None:
    """In a sweep (Hydra's multirun), the sweep folder's name; else None."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized() or HydraConfig.get().mode.name != "MULTIRUN":
        return None
    return Path(HydraConfig.get().sweep.dir).name


def wandb_logger(save_dir: str, project: str, name: str, group: str | None = None, tags: list[str] | None = None,
                 mode: str = "offline", **kwargs: Any) -> Any:
    """Lightning's WandbLogger; ``group`` null: the sweep folder's name in a sweep, so that its jobs share a group."""
    from pytorch_lightning.loggers import WandbLogger

    return WandbLogger(project=project, name=name, save_dir=save_dir, group=group or sweep_group(),
                       tags=list(tags or []), mode=mode, log_model=False, **kwargs)


def log_results(loggers: list, rows: list[dict[str, Any]], job: JobConfig, data: RetrievalData, index: PQIndex,
                clean_z: torch.Tensor, adversarial: tuple[torch.Tensor, torch.Tensor] | None) -> None:
    """The rows to every logger (``map/<attack>/<system>``); to those that take media also the rows as a table,
    the precision-recall curves of the clean and adversarial queries, and the image panel. ``adversarial`` is
    ``(uint8 images, features)`` of the adversarial queries, or None (``attack=none``)."""
    for lg in loggers:
        lg.log_metrics({f"map/{r['attack']}/{r['system']}": r["map"] for r in rows})
    media = [lg for lg in loggers if takes_media(lg)]
    if not media:
        return
    columns = sorted({k for r in rows for k in r})
    attack = next((r["attack"] for r in rows if r["attack"] != "clean"), None)
    queries = {"clean": clean_z, **({attack: adversarial[1]} if adversarial is not None else {})}
    curves = pr_curve_image(index, queries, data, job)
    panel = query_panel(data, adversarial[0], float(job.attack.eps)) if adversarial is not None else {}
    for lg in media:
        lg.log_table("results", columns=columns, data=[[r.get(c) for c in columns] for r in rows])
        lg.log_image("pr_curves", [curves])
        for kind, (images, captions) in panel.items():
            lg.log_image(f"queries/{kind}", images, caption=captions)


def pr_curve_image(index: PQIndex, queries: dict[str, torch.Tensor], data: RetrievalData, job: JobConfig
                   ) -> np.ndarray:
    """The report's precision-recall figure (Fig. 5) of this job's index, clean against adversarial queries, as an
    RGB array; the legend's mAP is that of the ranking drawn (full PQ ranking, at ``eval.topk``, ``eval.ties``).
    Queries are taken from the first up to ``MAX_RANKED`` (query, item) pairs."""
    import matplotlib.pyplot as plt

    from .metrics import mean_average_precision, relevance
    from .report import figure_data, figures

    n = max(1, min(len(data.query), MAX_RANKED // max(1, index.ntotal)))
    labels_q, labels_db = data.query.labels[:n], data.database.labels
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    maps: dict[tuple[str, str], float] = {}
    for system in job.systems:
        for attack, z in queries.items():
            dist, ids = index.search(z[:n], system)
            ranked = {(system, attack): (dist, ids, relevance(labels_q, labels_db, ids))}
            curves.setdefault(system, {}).update(figure_data.pr_curves(ranked)[system])
            maps[(system, attack)] = mean_average_precision(dist, ids, labels_q, labels_db, topk=job.topk,
                                                            ties=job.ties, empty=job.empty if job.topk else "zero")
    shown = f"{n} of {len(data.query)} queries" if n < len(data.query) else f"{n} queries"
    fig = figures.pr_curves(curves, maps, f"Precision-recall, {job.model['name']}, {job.quantizer.bits} bits ({shown})")
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image


def query_panel(data: RetrievalData, adversarial: torch.Tensor, eps: float
                ) -> dict[str, tuple[list[np.ndarray], list[str]]]:
    """For the first ``PANEL_QUERIES`` queries: the clean image, the adversarial image and the perturbation amplified
    to the display range (as in the report's Fig. 4), with captions."""
    from .report.figure_data import amplification, amplified_perturbation, class_name, hwc

    amplify = amplification(eps)
    picked = range(min(PANEL_QUERIES, len(adversarial)))
    captions = [f"query {i} ({class_name(data, i)})" for i in picked]
    return {"clean": ([hwc(data.query.images[i]) for i in picked], captions),
            "adversarial": ([hwc(adversarial[i]) for i in picked], captions),
            "perturbation": ([to_uint8(amplified_perturbation(data.query.images[i], adversarial[i], amplify))
                              for i in picked], [f"{c}, x{amplify:.0f}" for c in captions])}


def to_uint8(image: np.ndarray) -> np.ndarray:
    """An image in [0, 1] as 8-bit (wandb.Image takes float arrays as they are, not as a fraction of 255)."""
    return np.round(image * 255).astype(np.uint8)

