"""Trained checkpoints between machines: ``python -m pqattack.cache export`` and ``import`` in real subprocesses; the
jobs that train and then find the checkpoints run in-process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pqattack.cache import ArtifactCache, read_export

from .conftest import TINY, run_job

CLEAN_ONLY = [o for o in TINY if not o.startswith("attack.")] + ["attack=none"]


def cache_cli(args: list[str], cwd: Path, cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pqattack.cache", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PQATTACK_CACHE": str(cache), "PYTHONWARNINGS": "ignore"})


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict, dict]:
    """A cross-entropy job and a PQN job on the tiny set, in their own cache: (cwd, cache, ce record, pqn record)."""
    cwd = tmp_path_factory.mktemp("export")
    cache = cwd / "cache-a"
    ce = run_job(CLEAN_ONLY, cwd / "ce", cache)
    pqn = run_job([*CLEAN_ONLY, "quantizer=pqn", "quantizer.epochs=1", "quantizer.init_samples=300"], cwd / "pqn",
                  cache)
    return cwd, cache, ce, pqn


def overrides_printed(stdout: str) -> list[list[str]]:
    return [line.split("python -m pqattack ", 1)[1].split() for line in stdout.splitlines()
            if "a job finds it with: python -m pqattack " in line]


def test_export_in_parts_import_elsewhere_and_a_job_finds_it(trained: tuple[Path, Path, dict, dict]) -> None:
    cwd, cache_a, ce, _ = trained
    key = ce["meta"]["cache_keys"]["checkpoint"]
    proc = cache_cli(["export", "ce", "out/backbone.pqc", "--part-mb", "0.05"], cwd, cache_a)
    assert proc.returncode == 0, proc.stderr
    parts = sorted((cwd / "out").glob("backbone.part*-of-*.pqc"))
    assert len(parts) >= 2 and all(p.stat().st_size <= 0.05 * 2**20 for p in parts)
    manifest, tensors = read_export(parts[-1])
    assert manifest["dtype"] == "fp16" and [e["key"] for e in manifest["entries"]] == [key]
    original, _ = ArtifactCache(cache_a).load("checkpoint", key)
    for name, t in original.items():  # fp16-rounded float tensors, back in their own dtype; the rest exact
        expected = t.half().to(t.dtype) if t.is_floating_point() else t
        assert tensors[key][name].dtype == t.dtype and torch.equal(tensors[key][name], expected), name

    cache_b = cwd / "cache-b"
    proc = cache_cli(["import", str(parts[0])], cwd, cache_b)
    assert proc.returncode == 0, proc.stderr
    [overrides] = overrides_printed(proc.stdout)
    assert f"imported checkpoint {key}" in proc.stdout
    assert {"dataset=synthetic", "model=smallcnn", "model.width=8", "trainer.max_epochs=2",
            f"precision={ce['meta']['precision']}"} <= set(overrides)  # the training precision is in the key
    job = run_job([*overrides, "attack=none", "device=cpu", "progress=false"], cwd / "again", cache_b)
    assert job["meta"]["cache_keys"]["checkpoint"] == key
    assert not any(b.startswith("checkpoint/") for b in job["meta"]["cache_builds"])
    again = cache_cli(["import", str(cwd / "out" / "backbone.pqc")], cwd, cache_b)  # by the exported name too
    assert again.returncode == 0 and "already in the cache" in again.stdout


def test_fp32_export_round_trips_bit_exactly(trained: tuple[Path, Path, dict, dict]) -> None:
    cwd, cache_a, ce, _ = trained
    key = ce["meta"]["cache_keys"]["checkpoint"]
    proc = cache_cli(["export", key, "out/exact.pqc", "--dtype", "fp32"], cwd, cache_a)
    assert proc.returncode == 0, proc.stderr
    _, tensors = read_export(cwd / "out" / "exact.pqc")
    original, _ = ArtifactCache(cache_a).load("checkpoint", key)
    assert set(tensors[key]) == set(original)
    assert all(torch.equal(tensors[key][k], v) for k, v in original.items())


def test_pqn_travels_with_its_base(trained: tuple[Path, Path, dict, dict]) -> None:
    cwd, cache_a, _, pqn = trained
    keys = pqn["meta"]["cache_keys"]
    assert cache_cli(["export", "pqn", "out/pqn.pqc"], cwd, cache_a).returncode == 0
    cache_c = cwd / "cache-c"
    proc = cache_cli(["import", "out/pqn.pqc"], cwd, cache_c)
    assert proc.returncode == 0, proc.stderr
    base_overrides, pqn_overrides = overrides_printed(proc.stdout)
    assert "quantizer=pqn" in pqn_overrides and "quantizer.epochs=1" in pqn_overrides and "bits=16" in pqn_overrides
    job = run_job([*pqn_overrides, "attack=none", "device=cpu", "progress=false"], cwd / "pqn-again", cache_c)
    assert (job["meta"]["cache_keys"]["checkpoint"], job["meta"]["cache_keys"]["base_checkpoint"]) == (
        keys["checkpoint"], keys["base_checkpoint"])
    assert not any(b.startswith("checkpoint/") for b in job["meta"]["cache_builds"])


def test_damaged_or_missing_parts_and_other_data_are_refused(trained: tuple[Path, Path, dict, dict]) -> None:
    cwd, cache_a, _, _ = trained
    assert cache_cli(["export", "ce", "bad/b.pqc", "--part-mb", "0.05"], cwd, cache_a).returncode == 0
    parts = sorted((cwd / "bad").glob("b.part*-of-*.pqc"))
    # other images: the synthetic set with another seed is another dataset
    proc = cache_cli(["import", str(parts[0]), "dataset.seed=1"], cwd, cwd / "cache-d")
    assert proc.returncode == 2 and str(parts[0]) in proc.stderr and "data:" in proc.stderr, proc.stderr
    assert not (cwd / "cache-d" / "checkpoint").exists()
    # a damaged part
    blob = bytearray(parts[1].read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    parts[1].write_bytes(bytes(blob))
    proc = cache_cli(["import", str(parts[0])], cwd, cwd / "cache-d")
    assert proc.returncode == 3 and ("sha256" in proc.stderr or "not a readable export" in proc.stderr), proc.stderr
    # a missing part
    parts[1].unlink()
    proc = cache_cli(["import", str(parts[0])], cwd, cwd / "cache-d")
    assert proc.returncode == 3 and "missing" in proc.stderr, proc.stderr
    assert not (cwd / "cache-d" / "checkpoint").exists()


@pytest.fixture(scope="module")
def fastnet_recipe(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """A tiny job trained with the fastnet recipe (trainer=fastnet: settings the default trainer lacks), in its own
    cache: (cwd, cache, record)."""
    cwd = tmp_path_factory.mktemp("export-fastnet")
    return cwd, cwd / "cache-a", run_job([*CLEAN_ONLY, "trainer=fastnet"], cwd / "fast", cwd / "cache-a")


def test_a_checkpoint_of_another_trainer_option_imports_and_a_job_finds_it(
        fastnet_recipe: tuple[Path, Path, dict]) -> None:
    """The printed overrides select the trainer option whose settings the recipe has (trainer.crop_pad_mode is
    fastnet's only), so the import's own key check and a later job compose."""
    cwd, cache_a, record = fastnet_recipe
    key = record["meta"]["cache_keys"]["checkpoint"]
    assert cache_cli(["export", "fast", "out/fast.pqc"], cwd, cache_a).returncode == 0
    proc = cache_cli(["import", "out/fast.pqc"], cwd, cwd / "cache-b")
    assert proc.returncode == 0, proc.stderr
    [overrides] = overrides_printed(proc.stdout)
    assert "trainer=fastnet" in overrides and "trainer.max_epochs=2" in overrides
    assert not any(o.startswith("+") for o in overrides)
    job = run_job([*overrides, "attack=none", "device=cpu", "progress=false"], cwd / "again", cwd / "cache-b")
    assert job["meta"]["cache_keys"]["checkpoint"] == key
    assert not any(b.startswith("checkpoint/") for b in job["meta"]["cache_builds"])


def cache_main(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """``python -m pqattack.cache <args>`` in this process: its exit code and its stderr."""
    from pqattack.cache import main

    code = main(args)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("overrides, message", [
    (["trainer=fastnet", "bogus=1"], "bogus: no such key"),
    (["notkeyvalue"], "override 'notkeyvalue'"),
    (["attack.eps=abc"], "attack.eps=abc"),
    (["dataset.num_train=abc"], "dataset"),
    (["trainer=nope"], "trainer=nope: not an option of trainer; allowed: cpu_2epoch, ddp, default, fastnet, fastnet_10ep"),
    (["dataset._target_=no.such.Loader"], "no.such.Loader"),
])
def test_bad_import_overrides_are_one_line_config_errors(trained: tuple[Path, Path, dict, dict], overrides: list[str],
                                                         message: str, capsys: pytest.CaptureFixture) -> None:
    cwd, cache_a, _, _ = trained
    export = cwd / "out" / "args.pqc"
    if not export.is_file():
        assert cache_main(["export", str(cwd / "ce"), str(export), "--cache", str(cache_a)], capsys)[0] == 0
    cache = cwd / "cache-bad-overrides"
    code, err = cache_main(["import", str(export), *overrides, "--cache", str(cache)], capsys)
    assert code == 2 and err.startswith("config error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not cache.exists()


def test_export_refuses_a_file_argument_that_is_a_folder_or_a_key_and_a_part_size_not_above_zero(
        trained: tuple[Path, Path, dict, dict], capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """One line, exit 2, before anything is read or written: the FILE left out (the last SOURCE taken for it: a key,
    a run folder), a folder for FILE, and a part size of 0 or less."""
    cwd, cache_a, ce, _ = trained
    monkeypatch.chdir(cwd)  # a key taken for FILE is a relative path
    key = ce["meta"]["cache_keys"]["checkpoint"]

    def files() -> list[tuple[Path, int]]:
        return sorted((p, p.stat().st_size) for p in cwd.rglob("*") if p.is_file())

    before = files()
    for args, message in [([str(cwd / "pqn"), key], "is named like a checkpoint key"),
                          ([str(cwd / "ce"), str(cwd / "pqn")], "is a folder"),
                          ([key, str(cwd)], "is a folder"),
                          ([key, str(cwd / "x.pqc"), "--part-mb", "0"], "--part-mb 0.0: must be"),
                          ([key, str(cwd / "x.pqc"), "--part-mb", "-1"], "--part-mb -1.0: must be")]:
        code, err = cache_main(["export", *args, "--cache", str(cache_a)], capsys)
        assert code == 2 and err.startswith("usage error: export: ") and message in err, err
        assert len(err.strip().splitlines()) == 1, err
    assert files() == before


def test_import_of_a_folder_or_of_nothing_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A FILE that is a folder, or that does not exist (nor any part of it): one line naming it, exit 2 (bad
    input), nothing written."""
    cache = tmp_path / "cache"
    for path, message in [(tmp_path, "is a folder"), (tmp_path / "none.pqc", "no such file, nor parts none.part")]:
        code, err = cache_main(["import", str(path), "--cache", str(cache)], capsys)
        assert code == 2 and err.startswith(f"usage error: import: {path}") and message in err, err
        assert len(err.strip().splitlines()) == 1, err
    assert not cache.exists()
