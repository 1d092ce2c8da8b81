"""The wheel: built from the repository, installed without dependencies into a fresh virtual environment that
sees this environment's packages, and used from a folder outside the repository through the console script."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .conftest import REPO, TINY

pytestmark = pytest.mark.slow


def test_wheel_ships_the_configs_and_runs_from_anywhere(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(REPO)], check=True, capture_output=True, text=True)
    wheel = next(wheels.glob("pqattack-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "pqattack/conf/config.yaml" in names and "pqattack/conf/experiment/demo.yaml" in names
    assert "pqattack/conf/hydra/help/pqattack.yaml" in names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    purelib = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    # this environment's packages (torch, hydra, ...) without its editable pqattack (a .pth in a plain path entry
    # is not processed, so the repository's src/ stays out)
    (Path(purelib) / "test_env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    # without PYTHONPATH (a checkout's src/ on it made pip's install and the imports below see that checkout)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PQATTACK_CACHE")}
    subprocess.run([py, "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], check=True,
                   capture_output=True, text=True, env=env)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    script = venv / "bin" / "pqattack"  # the console script pip made from the wheel's entry point
    where = subprocess.run([py, "-c", "import pqattack; print(pqattack.__file__)"], cwd=outside, env=env,
                           check=True, capture_output=True, text=True).stdout.strip()
    assert where.startswith(purelib), where
    cfg = subprocess.run([str(script), "experiment=demo", "--cfg", "job"], cwd=outside, env=env,
                         capture_output=True, text=True)
    assert cfg.returncode == 0, cfg.stderr[-2000:]
    assert "SyntheticSource" in cfg.stdout and "smallcnn" in cfg.stdout
    job = subprocess.run([str(script), *TINY, "attack=apd", "hydra.run.dir=run", f"cache.dir={tmp_path / 'cache'}"],
                         cwd=outside, env=env, capture_output=True, text=True)
    assert job.returncode == 0, job.stderr[-3000:]
    assert job.stdout.strip().splitlines()[-1] == f"results: {outside / 'run' / 'results.json'}"
    assert (outside / "run" / "results.json").is_file()
    helped = subprocess.run([str(script), "--help"], cwd=outside, env=env, capture_output=True, text=True)
    assert helped.returncode == 0, helped.stderr[-2000:]
    assert helped.stdout.startswith("pqattack:") and "_schema" not in helped.stdout and "_pgd" not in helped.stdout
