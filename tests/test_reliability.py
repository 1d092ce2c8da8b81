"""Crashes, concurrency and repeatability, with real processes: SIGKILL mid-write, two jobs racing for
one backbone, a resumed sweep, the same command twice; a diverging training (in-process)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pqattack.cache import ArtifactCache, spec_key

from .conftest import TINY, REPO, load_results, results_path, run_cli, run_job

WRITER = """
import sys, torch
from pqattack.cache import ArtifactCache
cache = ArtifactCache(sys.argv[1])
print("writing", flush=True)
cache.get_or_build("features", {"big": 1}, lambda: ({"z": torch.randn(60_000_000)}, {}))
print("done", flush=True)
"""


def test_sigkill_during_a_cache_write_leaves_nothing_that_loads(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            cwd=REPO)
    assert proc.stdout.readline().strip() == "writing"
    deadline = time.time() + 60
    while not list((tmp_path / "features").glob(".tmp-*/tensors.pt")) and time.time() < deadline:
        time.sleep(0.01)
    assert list((tmp_path / "features").glob(".tmp-*/tensors.pt")), "the writer never began writing its tensors"
    time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL  # killed while writing, not finished (nor failed) before
    cache = ArtifactCache(tmp_path)
    key = spec_key("features", {"big": 1})
    # killed before the rename: no entry; a later run builds it afresh and can load it
    assert cache.load("features", key) is None
    tensors, _, key2 = cache.get_or_build("features", {"big": 1}, lambda: ({"z": torch.ones(3)}, {}))
    assert key2 == key and torch.equal(tensors["z"], torch.ones(3))
    assert cache.load("features", key) is not None


def test_two_jobs_needing_one_backbone_train_it_once(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    env = {**os.environ, "PQATTACK_CACHE": str(cache), "PYTHONWARNINGS": "ignore"}
    procs = [subprocess.Popen([sys.executable, "-m", "pqattack", *TINY, f"attack={a}", f"hydra.run.dir=run_{a}"],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for a in ("basic", "apd")]
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    builds = [load_results(tmp_path / f"run_{a}" / "results.json")["meta"]["cache_builds"] for a in ("basic", "apd")]
    trained = [b for job in builds for b in job if b.startswith("checkpoint/")]
    assert len(trained) == 1
    keys = {load_results(tmp_path / f"run_{a}" / "results.json")["meta"]["cache_keys"]["checkpoint"]
            for a in ("basic", "apd")}
    assert len(keys) == 1


def test_resumed_sweep_skips_complete_jobs(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    args = ["-m", *TINY, "attack=basic,aod", "resume=true"]
    first = load_results(results_path(run_cli([*args, "hydra.sweep.dir=a"], tmp_path, cache), tmp_path))
    # as if the sweep had been killed during its second job: that job's results never reached the cache
    entries = sorted((p for p in (cache / "results").iterdir() if not p.name.startswith(".")),
                     key=lambda p: p.stat().st_mtime)
    assert len(entries) == 2
    shutil.rmtree(entries[-1])
    again = load_results(results_path(run_cli([*args, "hydra.sweep.dir=b"], tmp_path, cache), tmp_path))
    jobs = [load_results(p) for p in sorted((tmp_path / "b").glob("*/results.json"))]
    assert [j.get("resumed", False) for j in jobs] == [True, False]
    assert [j.get("resumed", False) for j in again["meta"]["jobs"]] == [True, False]  # the sweep's record says so
    canon = lambda rows: sorted(json.dumps(r, sort_keys=True) for r in rows)  # noqa: E731
    assert canon(again["rows"]) == canon(first["rows"])


def test_a_resumed_job_on_changed_images_is_computed_again(tmp_path: Path) -> None:
    """The results key holds the config, not the images: a resumed job whose image folder changed since its
    results were cached (one test image replaced) is computed again, on the new images; unchanged, it resumes."""
    from .fixtures import make_image_folder

    root = tmp_path / "images"
    make_image_folder(root, per_class=30)
    job = ["dataset=imagefolder", f"dataset.root={root}", "dataset.num_queries=9", "dataset.num_database=36",
           "model=smallcnn", "model.width=8", "trainer.max_epochs=1", "trainer.batch_size=16", "bits=16",
           "device=cpu", "progress=false", "attack=basic", "resume=true"]
    first = run_job(job, tmp_path / "r0", tmp_path / "cache")
    assert not first.get("resumed")
    assert run_job(job, tmp_path / "r1", tmp_path / "cache").get("resumed")
    test_image = sorted((root / "test" / "cat").iterdir())[0]
    Image.fromarray(np.full((40, 40, 3), 90, dtype=np.uint8)).save(test_image.with_suffix(".png"))
    test_image.unlink()
    # the same command again, as after a killed sweep: a new process, which loads the images afresh
    again = load_results(results_path(run_cli(job, tmp_path, tmp_path / "cache"), tmp_path))
    assert not again.get("resumed")
    assert again["meta"]["cache_keys"]["features"] != first["meta"]["cache_keys"]["features"]


def test_a_checkpoint_trained_again_to_other_weights_is_not_served_with_the_old_ones_artifacts(tmp_path: Path) -> None:
    """A key names a configuration: a backbone trained again under it (an emptied checkpoint folder, another
    machine's kernels) may come out with other weights. The features, codebooks, query set and resumable results
    of the first training were then served with the second (rows of neither); a real job now makes them again
    from the weights it evaluates, and resumes only while they are unchanged."""
    cache_dir = tmp_path / "cache"
    job = [*TINY, "attack=apd", "resume=true"]
    first = run_job(job, tmp_path / "r0", cache_dir)
    keys = first["meta"]["cache_keys"]
    assert run_job(job, tmp_path / "r1", cache_dir).get("resumed")
    cache = ArtifactCache(cache_dir)
    ckpt = keys["checkpoint"]
    state, meta = cache.load("checkpoint", ckpt)
    shutil.rmtree(cache.entry("checkpoint", ckpt))  # trained again, to slightly other weights
    torch.manual_seed(1)
    cache.save("checkpoint", ckpt, {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v
                                    for k, v in state.items()},
               {k: v for k, v in meta.items() if k not in ("sha256", "inputs")})
    again = run_job(job, tmp_path / "r2", cache_dir)
    assert not again.get("resumed") and again["meta"]["cache_keys"] == keys  # the same keys, ...
    assert {f"{kind}/{keys[kind]}" for kind in ("features", "codebooks", "adversarial_queries")} <= set(
        again["meta"]["cache_builds"])  # ... made again from the weights now under them
    assert again["rows"] != first["rows"]
    # the rows a cache holding only the new checkpoint gives: nothing of the first training's left in them
    shutil.copytree(cache.entry("checkpoint", ckpt), tmp_path / "alone" / "checkpoint" / ckpt)
    alone = run_job(job, tmp_path / "r3", tmp_path / "alone")
    assert alone["rows"] == again["rows"] and "checkpoint/" + ckpt in alone["meta"]["cache_hits"]
    assert run_job(job, tmp_path / "r4", cache_dir).get("resumed")


def test_same_command_twice_gives_identical_rows(tmp_path: Path) -> None:
    rows = []
    for i in range(2):
        proc = run_cli([*TINY, "attack=apd", f"hydra.run.dir=r{i}"], tmp_path, tmp_path / f"cache{i}")
        res = load_results(results_path(proc, tmp_path))
        rows.append(res["rows"])
        assert res["meta"]["seed"] == 0 and res["meta"]["cache_keys"]["checkpoint"]
    assert rows[0] == rows[1]


def test_diverged_training_stops_with_a_message(tmp_path: Path) -> None:
    from pqattack.errors import NumericsError

    with pytest.raises(NumericsError, match="diverged") as err:
        run_job([*TINY, "trainer.lr=1e30", "trainer.max_epochs=1"], tmp_path / "r", tmp_path / "cache")
    assert (err.value.kind, err.value.exit_code) == ("numerics", 3)
    assert not (tmp_path / "r" / "results.json").exists()


def test_grayscale_rgba_and_palette_images_become_rgb(tmp_path: Path) -> None:
    from pqattack.data import CIFAR10Source

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c, mode in (("a", "L"), ("b", "RGBA"), ("c", "P")):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(2):
                img = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).convert(mode)
                img.save(tmp_path / split / c / f"{i}.png")
    data = CIFAR10Source(root=str(tmp_path), num_queries=2, num_database=4).load(ArtifactCache(tmp_path / "c"))
    assert data.train.images.shape == (6, 3, 32, 32)
    gray = data.train.images[0]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


def test_empty_class_folder_is_named(tmp_path: Path) -> None:
    import pytest

    from pqattack.data import CIFAR10Source, DatasetError

    for split in ("train", "test"):
        (tmp_path / split / "a").mkdir(parents=True)
        (tmp_path / split / "b").mkdir(parents=True)
        Image.new("RGB", (32, 32)).save(tmp_path / split / "a" / "0.png")
    with pytest.raises(DatasetError, match=r"train/b holds no images"):
        CIFAR10Source(root=str(tmp_path), num_queries=1, num_database=1).load(ArtifactCache(tmp_path / "c"))


def test_checkpoint_of_another_architecture_or_class_count_is_a_clear_error(tmp_path: Path) -> None:
    import pytest

    from pqattack.cache import CacheError
    from pqattack.models import build_backbone
    from pqattack.runtime import Runtime
    from pqattack.stages.backbone import load_backbone

    rt = Runtime(torch.device("cpu"), "fp32", ArtifactCache(tmp_path))
    model = {"name": "smallcnn", "arch": "smallcnn", "width": 8}
    other = build_backbone("alexnet", 10).state_dict()
    with pytest.raises(CacheError, match="does not fit model.arch=smallcnn"):
        load_backbone(model, other, "k1", 10, rt)
    fewer = build_backbone("smallcnn", 5, width=8).state_dict()
    with pytest.raises(CacheError, match="10 classes"):
        load_backbone(model, fewer, "k2", 10, rt)


def test_codebooks_of_the_wrong_shape_or_with_nan_are_refused() -> None:
    import pytest

    from pqattack.cache import CacheError
    from pqattack.stages.target import check_codebooks

    check_codebooks(torch.zeros(4, 16, 8), 4, 16, 32, "ok")
    with pytest.raises(CacheError, match=r"expected \(M, K, D/M\) = \(4, 16, 8\)"):
        check_codebooks(torch.zeros(4, 64, 8), 4, 16, 32, "cb")
    bad = torch.zeros(4, 16, 8)
    bad[0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite"):
        check_codebooks(bad, 4, 16, 32, "cb")
