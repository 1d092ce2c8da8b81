"""``pqattack [overrides]`` (or ``python -m pqattack``): one job, or a sweep with ``-m``. See ``conf/config.yaml``
and ``pqattack --help``."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from .config import register
from .errors import PQAttackError

register()
log = logging.getLogger("pqattack")


def set_log_level(cfg: DictConfig) -> None:
    """Quiet by default (``log_level: warning``): the project's progress bars, warnings and table; no FAISS loader
    lines, Lightning tips or library deprecation notes. ``log_level=info`` (or ``hydra.verbose=true``) shows them."""
    import warnings

    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.get().verbose:
        return
    level = getattr(logging, str(cfg.get("log_level", "warning")).upper())
    logging.getLogger().setLevel(level)
    for name in ("pqattack", "faiss", "pytorch_lightning", "lightning", "lightning_fabric"):
        logging.getLogger(name).setLevel(level)
    if level > logging.INFO:
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", module="pytorch_lightning")


def remove_empty_run_dir(output_dir: Path) -> None:
    """Undo Hydra's run folder when the job failed before writing anything of its own, and the folders above it
    (``outputs/runs``, ``outputs``) that it leaves empty, up to the working directory."""
    own = [p for p in output_dir.iterdir() if p.name != ".hydra" and p.suffix != ".log"] if output_dir.is_dir() else []
    if output_dir.is_dir() and not own:
        shutil.rmtree(output_dir, ignore_errors=True)
        cwd = Path.cwd().resolve()
        for parent in output_dir.resolve().parents:
            if parent == cwd or cwd not in parent.parents:
                break
            try:
                parent.rmdir()  # only an empty folder
            except OSError:
                break


def close_loggers(loggers: list, status: str) -> None:
    """Finish the job's loggers, if it got as far as making any (a failed config check makes none)."""
    if loggers:
        from .loggers import finish_loggers

        finish_loggers(loggers, status)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from .config import check_inputs, load_job

    output_dir = Path(HydraConfig.get().runtime.output_dir)
    loggers: list = []
    status = "failed"
    try:
        check_inputs(load_job(cfg))  # before the pipeline's imports (Lightning, FAISS): fails in about two seconds
        set_log_level(cfg)
        from .loggers import make_loggers
        from .pipeline import run

        loggers = make_loggers(cfg, output_dir)
        path = run(cfg, output_dir, loggers)
        status = "success"
    except PQAttackError as exc:
        print(f"{exc.kind} error: {exc}", file=sys.stderr)
        close_loggers(loggers, status)
        loggers = []
        remove_empty_run_dir(output_dir)
        sys.exit(exc.exit_code)
    finally:
        close_loggers(loggers, status)
    print((output_dir / "results.md").read_text())
    if HydraConfig.get().mode.name == "RUN":
        print(f"results: {path}")


def cli() -> None:
    """``pqattack`` / ``python -m pqattack``: the overrides are composed first, so that an unknown option or key, a
    value of the wrong type or a malformed override is one line and exit 2 (``overrides.check_command_line``);
    then Hydra runs the job or the sweep."""
    from .overrides import check_command_line

    try:
        check_command_line(sys.argv[1:])
    except PQAttackError as exc:
        print(f"{exc.kind} error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    main()


if __name__ == "__main__":
    cli()
