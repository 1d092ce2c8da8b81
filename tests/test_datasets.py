"""NUS-WIDE's distribution layout, multi-label relevance and mAP@k, and ImageFolder trees of mixed image sizes:
the real loaders on real files written in those layouts (the real NUS-WIDE images cannot exist here)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from pqattack.cache import ArtifactCache
from pqattack.data import DatasetError, ImageFolderSource, NUSWIDESource, shares_label, top1_hit
from pqattack.metrics import mean_average_precision, relevance

from .conftest import run_cli, run_job
from .fixtures import make_image_folder, make_nuswide_tree


@pytest.fixture(scope="module")
def nuswide_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("nus")
    return root, make_nuswide_tree(root / "NUS-WIDE")


def test_nuswide_layout_selects_top_concepts_and_splits(nuswide_root: tuple[Path, dict], tmp_path: Path) -> None:
    root, info = nuswide_root
    data = NUSWIDESource(root=str(root), num_queries=25, num_database=None).load(ArtifactCache(tmp_path, True))
    # the ten most frequent concepts, by count over train + test (independent count here)
    counts = info["labels"]["train"].sum(0) + info["labels"]["test"].sum(0)
    order = sorted(range(len(counts)), key=lambda c: (-counts[c], info["names"][c]))[:10]
    assert data.classes == [info["names"][c] for c in order]
    expected = {s: info["labels"][s][:, order] for s in ("train", "test")}
    keep = {s: expected[s].any(1) for s in expected}
    assert all((~keep[s]).any() for s in keep), "the fixture must hold images without a top concept"
    assert data.multilabel and data.train.labels.dtype == torch.bool and data.train.labels.shape[1] == 10
    np.testing.assert_array_equal(data.train.labels.numpy(), expected["train"][keep["train"]])
    # queries: from the test split; database: every other selected image (the paper's protocol)
    n_test, n_train = int(keep["test"].sum()), int(keep["train"].sum())
    assert len(data.query) == 25 and len(data.database) == n_test - 25 + n_train
    test_labels = expected["test"][keep["test"]]
    np.testing.assert_array_equal(data.query.labels.numpy(), test_labels[data.query.index.numpy()])
    assert len(set(data.query.index.tolist()) & set(data.database.index.tolist())) == 0
    assert data.train.images.shape[1:] == (3, 32, 32) and data.train.images.dtype == torch.uint8
    # database=test: only the non-query test images
    only_test = NUSWIDESource(root=str(root), num_queries=25, num_database=None, database="test").load(
        ArtifactCache(tmp_path, True))
    assert len(only_test.database) == n_test - 25


def test_nuswide_errors_name_the_file(tmp_path: Path) -> None:
    root = tmp_path / "NUS-WIDE"
    info = make_nuswide_tree(root, num_train=40, num_test=30, windows_paths=False)
    cache = ArtifactCache(tmp_path / "cache", True)
    with pytest.raises(DatasetError, match="NUS-WIDE not found under dataset.root"):
        NUSWIDESource(root=str(tmp_path / "nowhere"), num_queries=5, num_database=None).load(cache)
    victim = root / "Flickr" / Path(info["files"]["test"][3].replace("\\", "/"))
    labels = info["labels"]["test"]
    victim.unlink()
    counts = info["labels"]["train"].sum(0) + labels.sum(0)
    top10 = sorted(range(len(counts)), key=lambda c: (-counts[c], info["names"][c]))[:10]
    assert labels[3][top10].any()  # the missing file is among the selected ones (images of a top-10 concept)
    with pytest.raises(DatasetError, match=f"missing.*{victim.name}.*skip_missing"):
        NUSWIDESource(root=str(tmp_path), num_queries=5, num_database=None).load(cache)
    data = NUSWIDESource(root=str(tmp_path), num_queries=5, num_database=None, skip_missing=True).load(cache)
    assert len(data.query) == 5
    bad = root / "Groundtruth" / "TrainTestLabels" / "Labels_concept03_Train.txt"
    bad.write_text("0\n1\n")
    with pytest.raises(DatasetError, match="Labels_concept03_Train.txt has 2 lines"):
        NUSWIDESource(root=str(tmp_path), num_queries=5, num_database=None).load(cache)
    with pytest.raises(DatasetError, match="dataset.database='all'"):
        NUSWIDESource(root=str(tmp_path), num_queries=5, num_database=None, database="all")


@pytest.mark.parametrize("overrides,message", [
    (["dataset=nuswide", "dataset.database=bogus"], "dataset.database='bogus': expected rest"),
    (["dataset=imagefolder", "dataset.test_fraction=1.5"], "dataset.test_fraction=1.5: must be in (0, 1)"),
])
def test_a_dataset_value_its_loader_refuses_is_a_start_up_error(tmp_path: Path, overrides: list[str],
                                                                message: str) -> None:
    """The command's start-up check (``check_inputs``) builds the dataset's source: the loader's own refusal comes
    out as the ``DatasetError`` it is (Hydra wrapped it, and the command printed a traceback, exit 1, leaving its
    run folder), and an out-of-range split fraction is refused there, not after the images are listed."""
    from pqattack.config import check_inputs, load_job

    from .conftest import compose_config

    (tmp_path / "a").mkdir()
    job = load_job(compose_config([*overrides, f"dataset.root={tmp_path}", "model=smallcnn", "device=cpu"]))
    with pytest.raises(DatasetError) as err:
        check_inputs(job)
    assert message in str(err.value)


def _independent_ap(dist: np.ndarray, q_labels: np.ndarray, db_labels: np.ndarray, k: int | None) -> float:
    """Plain python: relevance as a shared concept, AP over the top k (no ties in ``dist``)."""
    aps = []
    for i in range(len(dist)):
        order = np.argsort(dist[i])[: k or dist.shape[1]]
        concepts = set(np.flatnonzero(q_labels[i]))
        rel = [bool(concepts & set(np.flatnonzero(db_labels[j]))) for j in order]
        hits, total = 0, 0.0
        for rank, r in enumerate(rel, 1):
            if r:
                hits += 1
                total += hits / rank
        aps.append(total / hits if hits else 0.0)
    return float(np.mean(aps)) * 100


def test_multilabel_map_and_map_at_k_against_an_independent_computation() -> None:
    rng = np.random.default_rng(3)
    q, n, c = 30, 400, 10
    q_labels = rng.random((q, c)) < 0.15
    db_labels = rng.random((n, c)) < 0.15
    dist = rng.random((q, n)).astype(np.float32)
    order = np.argsort(dist, 1)
    sorted_dist = torch.from_numpy(np.take_along_axis(dist, order, 1))
    ids = torch.from_numpy(order)
    ql, dl = torch.from_numpy(q_labels), torch.from_numpy(db_labels)
    for k in (None, 50):
        ours = mean_average_precision(sorted_dist, ids, ql, dl, topk=k)
        assert ours == pytest.approx(_independent_ap(dist, q_labels, db_labels, k), abs=1e-9)
    # the full ranking also matches sklearn's average precision per query
    rel = q_labels.astype(int) @ db_labels.T.astype(int) > 0
    sk = np.mean([average_precision_score(rel[i], -dist[i]) if rel[i].any() else 0.0 for i in range(q)]) * 100
    assert mean_average_precision(sorted_dist, ids, ql, dl) == pytest.approx(sk, abs=1e-9)
    # relevance: bit-packed path (<= 63 concepts) equals the chunked one (more concepts), -1 ids never relevant
    wide_q = torch.cat([ql, torch.zeros(q, 60, dtype=torch.bool)], 1)
    wide_db = torch.cat([dl, torch.zeros(n, 60, dtype=torch.bool)], 1)
    ids_m = ids.clone()
    ids_m[:, -3:] = -1
    packed, chunked = relevance(ql, dl, ids_m), relevance(wide_q, wide_db, ids_m)
    assert torch.equal(packed, chunked) and not packed[:, -3:].any()
    assert torch.equal(shares_label(ql, dl), torch.from_numpy(rel))


def test_top1_hit_single_and_multilabel() -> None:
    logits = torch.tensor([[0.1, 2.0, 0.3], [3.0, 0.0, 0.0]])
    assert top1_hit(logits, torch.tensor([1, 2])).tolist() == [True, False]
    multi = torch.tensor([[False, True, True], [False, False, True]])
    assert top1_hit(logits, multi).tolist() == [True, False]


@pytest.mark.parametrize("progress", [False, True])
def test_image_decoding_follows_the_jobs_progress_setting(tmp_path: Path, capfd: pytest.CaptureFixture,
                                                          progress: bool) -> None:
    """The loaders' decoding bars are the job's progress bars: ``progress=false`` hides them too (they showed
    whatever it said)."""
    from pqattack.runtime import Runtime
    from pqattack.stages.data import load_data

    from .conftest import compose_config

    make_image_folder(tmp_path / "images", per_class=4)
    cfg = compose_config(["dataset=imagefolder", f"dataset.root={tmp_path / 'images'}", "dataset.num_queries=2",
                          "model=smallcnn", "device=cpu"])
    rt = Runtime(torch.device("cpu"), "fp32", ArtifactCache(tmp_path / "cache", True), progress=progress)
    capfd.readouterr()
    load_data(cfg, ImageFolderSource(root=str(tmp_path / "images"), num_queries=2, num_database=None), rt)
    assert ("decode" in capfd.readouterr().err) is progress


def test_a_16_bit_grayscale_png_is_scaled_to_8_bits(tmp_path: Path) -> None:
    """A 16-bit PNG (PIL mode I;16) decodes to its values / 257 on three equal channels, not clipped to white."""
    from PIL import Image

    from pqattack.data.imagefolder import decode_images

    values = np.random.default_rng(0).integers(0, 65536, (24, 24)).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as im:
        assert im.mode.startswith("I")
    decoded = decode_images([tmp_path / "deep.png"], 24, resize=False, progress=False)
    expected = (values // 257).astype(np.uint8)
    assert decoded.shape == (1, 3, 24, 24)
    assert all(np.array_equal(c, expected) for c in decoded[0])


@pytest.mark.parametrize("split", [True, False])
def test_imagefolder_mixed_sizes(tmp_path: Path, split: bool) -> None:
    make_image_folder(tmp_path / "imgs", per_class=20, split=split)
    src = ImageFolderSource(root=str(tmp_path / "imgs"), image_size=24, num_queries=6, num_database=None,
                            test_fraction=0.25)
    data = src.load(ArtifactCache(tmp_path / "cache", True))
    assert data.classes == ["cat", "dog", "ship"]
    assert data.train.images.shape[1:] == (3, 24, 24)
    n_test = 3 * 10 if split else 3 * 5  # 20 // 2 per class, or a quarter of each class
    assert len(data.query) == 6 and len(data.database) == n_test - 6
    assert len(data.train) == (60 if split else 45)
    # the colour follows the class: the resize kept the content; grayscale files came back as 3 equal channels
    imgs = data.train.images.float()
    gray = (imgs[:, 0] == imgs[:, 1]).all((1, 2)) & (imgs[:, 1] == imgs[:, 2]).all((1, 2))
    assert 0 < int(gray.sum()) < len(gray)
    assert (imgs.mean((2, 3)).argmax(1) == data.train.labels)[~gray].all()
    with pytest.raises(DatasetError, match="image .* is .*expected 24x24; set dataset.resize=true"):
        ImageFolderSource(root=str(tmp_path / "imgs"), image_size=24, resize=False, num_queries=6,
                          num_database=None).load(ArtifactCache(tmp_path / "cache2", True))


def test_imagefolder_seeded_split_is_stratified_and_stable(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "imgs", per_class=20, split=False)
    load = lambda seed: ImageFolderSource(root=str(tmp_path / "imgs"), num_queries=3, num_database=None,  # noqa: E731
                                          split_seed=seed).load(ArtifactCache(tmp_path / "c", True))
    a, b, c = load(0), load(0), load(1)
    assert torch.equal(a.train.images, b.train.images) and not torch.equal(a.train.images, c.train.images)
    assert torch.bincount(a.train.labels).tolist() == [16, 16, 16]


NUS_TINY = ["dataset=nuswide", "dataset.num_queries=30", "dataset.eval_topk=100", "model=smallcnn", "model.width=8",
            "trainer.max_epochs=2", "trainer.batch_size=32", "trainer.lr=0.05", "bits=16", "device=cpu",
            "progress=false", "attack.batch_size=30"]


def test_multi_hot_data_trains_with_binary_cross_entropy(nuswide_root: tuple[Path, dict], tmp_path: Path) -> None:
    """NUS-WIDE's data is multi-label, which the backbone stage hands to the classifier, whose loss is then binary
    cross-entropy on the logits (a soft-target cross-entropy would also run on multi-hot labels)."""
    from pqattack.models import build_backbone
    from pqattack.models.classifier import ClassifierModule

    root, _ = nuswide_root
    data = NUSWIDESource(root=str(root), num_queries=25, num_database=None).load(ArtifactCache(tmp_path, True))
    assert data.multilabel and data.train.labels.dtype == torch.bool
    module = ClassifierModule(build_backbone("smallcnn", 10, width=8), multilabel=data.multilabel)
    logits, labels = torch.randn(6, 10, generator=torch.Generator().manual_seed(0)), data.train.labels[:6]
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.float())
    assert torch.allclose(module.loss(logits, labels), expected)


def test_nuswide_job_end_to_end_with_bce_and_map_at_k(nuswide_root: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = nuswide_root
    res = run_job([*NUS_TINY, f"dataset.root={root}", "attack=apd"], tmp_path / "run", tmp_path / "cache")
    rows = {(r["attack"], r["system"]): r for r in res["rows"]}
    assert set(rows) == {(a, s) for a in ("clean", "apd") for s in ("sdc", "adc")}
    assert all(r["topk"] == 100 and r["dataset"] == "nuswide" for r in rows.values())
    assert rows[("apd", "sdc")]["map"] < rows[("clean", "sdc")]["map"]
    assert res["meta"]["dataset_label"] == "NUS-WIDE"
    assert "mAP@100" in (tmp_path / "run" / "results.md").read_text()
    # the backbone trained on the multi-hot labels (its loss is logged; that it is binary cross-entropy:
    # test_multi_hot_data_trains_with_binary_cross_entropy)
    assert "train/loss" in res["meta"]["training"]["train_metrics"]
    # the report rebuilds the multi-label system and reproduces the recorded mAP@k
    rep = subprocess.run([sys.executable, "-m", "pqattack.report", "run", "--out", "rep"], cwd=tmp_path,
                         env={**os.environ, "PQATTACK_CACHE": str(tmp_path / "cache")}, capture_output=True,
                         text=True, timeout=300)
    assert rep.returncode == 0, rep.stderr[-3000:]
    index = (tmp_path / "rep" / "index.md").read_text()
    assert "mAP@100" in index and "do not give the recorded mAP" not in index
    assert (tmp_path / "rep" / "retrieval_examples_sdc.png").is_file()


def test_imagefolder_job_end_to_end(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "imgs", per_class=40, split=True)
    res = run_job(["dataset=imagefolder", f"dataset.root={tmp_path / 'imgs'}", "dataset.num_queries=20",
                   "model=smallcnn", "model.width=8", "trainer.max_epochs=2", "trainer.batch_size=32", "bits=16",
                   "device=cpu", "progress=false", "attack=basic"], tmp_path / "run", tmp_path / "cache")
    assert {r["attack"] for r in res["rows"]} == {"clean", "basic"}
    assert res["meta"]["dataset_label"].startswith("ImageFolder")


def test_missing_dataset_is_one_clear_error_with_nothing_written(tmp_path: Path) -> None:
    proc = run_cli(["dataset=nuswide", f"dataset.root={tmp_path / 'absent'}", "device=cpu", "hydra.run.dir=run"],
                   tmp_path, tmp_path / "cache", check=False)
    assert proc.returncode == 2
    assert "data error: NUS-WIDE not found under dataset.root" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()
