"""``python -m pqattack [overrides]``: one job, or a sweep with ``-m``. See ``conf/config.yaml``."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from .config import CONF_DIR, register_resolvers

register_resolvers()

CONFIG_DIR = str(CONF_DIR)
log = logging.getLogger("pqattack")


def make_loggers(cfg: DictConfig, output_dir: Path) -> list:
    """Lightning loggers for the run: CSV always; wandb (offline unless WANDB_MODE says otherwise)."""
    from pytorch_lightning.loggers import CSVLogger

    loggers = [CSVLogger(save_dir=str(output_dir), name="csv", version="")]
    if cfg.logger.get("wandb"):
        from pytorch_lightning.loggers import WandbLogger

        w = cfg.logger.wandb
        os.environ.setdefault("WANDB_MODE", w.mode)
        save_dir = Path(w.save_dir) if w.save_dir else output_dir
        loggers.append(WandbLogger(project=w.project, name=w.name, save_dir=str(save_dir),
                                   group=w.group, tags=list(w.tags or []), log_model=False))
    return loggers


def _remove_empty_run_dir(output_dir: Path) -> None:
    """Undo Hydra's run folder when the job failed before writing anything of its own."""
    import shutil

    own = [p for p in output_dir.iterdir() if p.name != ".hydra" and p.suffix != ".log"] if output_dir.is_dir() else []
    if output_dir.is_dir() and not own:
        shutil.rmtree(output_dir, ignore_errors=True)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from .config import ConfigError, validate
    from .pipeline import run

    output_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        validate(cfg)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        _remove_empty_run_dir(output_dir)
        sys.exit(2)
    from .cache import CacheError
    from .data import DatasetError
    from .transfer import QuerySetError

    kinds = {ConfigError: "config", DatasetError: "data", QuerySetError: "transfer", CacheError: "cache", FloatingPointError: "numerics"}
    try:
        path = run(cfg, output_dir, make_loggers(cfg, output_dir))
    except tuple(kinds) as exc:
        kind = next(v for k, v in kinds.items() if isinstance(exc, k))
        print(f"{kind} error: {exc}", file=sys.stderr)
        _remove_empty_run_dir(output_dir)
        sys.exit(2 if kind in ("config", "data", "transfer") else 3)
    print((output_dir / "results.md").read_text())
    if HydraConfig.get().mode.name == "RUN":
        print(f"results: {path}")


if __name__ == "__main__":
    main()
