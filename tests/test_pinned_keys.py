"""Cache keys pinned as literal strings: a change of any spec (``stages.keys``) or of the configs that changes the key
of a checkpoint, features, codebooks, query set or results already in users' caches fails here.

The keys were computed before the model configs named their builder (``_target_``), with
``stages.keys.artifact_keys(load_job(cfg), instantiate(cfg.dataset).load(cache), "bf16", torch.device("cpu"))`` on
the configs composed from the overrides below (``cache.dir`` set to a fresh folder, run from the repository root,
PQATTACK_DATA unset; "bf16" is what ``precision=auto`` resolved to on the CPU they were computed on, which has
AVX512-BF16). CIFAR-10 is the JPEG copy unpacked from ../shared/data/cifar10-jpeg.tar.xz into data/ (its data keys
hold the files' names, sizes and modification times, which tar keeps).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from pqattack.cache import ArtifactCache
from pqattack.config import CONF_DIR, load_job
from pqattack.stages.keys import artifact_keys

from .conftest import REPO

PINNED = {
    "demo": (["experiment=demo", "bits=16", "attack=aod"], {
        "checkpoint": "be8c1a1dc443444b569ec4cf", "features": "082e4f021c18ce10eba492e1",
        "codebooks": "32f3243d2888e73b3cfdc2fc", "adversarial_queries": "8175b416cca77a210519abce",
        "results": "d749696c82f1a1019bc5e0a6"}),
    "table1_cpu_vgg16": (["experiment=table1_cpu", "model=vgg16", "bits=16", "attack=aod"], {
        "checkpoint": "3b6d29549c7c0a6a3e37b070", "features": "f4d352dd5305a42fe63cb786",
        "codebooks": "434b2dee71f0c01b960f2eee", "adversarial_queries": "88292ef01007571a8cf93945",
        "results": "182e44d4dc4158c5954f6adf"}),
    "table1_cpu_resnet18": (["experiment=table1_cpu", "model=resnet18", "bits=16", "attack=aod"], {
        "checkpoint": "675e0b90e0d15502ec0f3a5a", "features": "bf03faade1c12765e0b9094c",
        "codebooks": "a50d468e4e158c95dbc8951c", "adversarial_queries": "0ff03168ec99874dd09447d9",
        "results": "577e369e204e0147f7aa75eb"}),
}
CIFAR = REPO / "data" / "cifar10-jpeg"
#: table1_cpu's data keys (``RetrievalData.train_key``, ``query_key``, ``database_key``) on that copy: with them the
#: rest of its keys, everything the configs and specs put in, are checked without the images (CI has none)
CIFAR_DATA_KEYS = {"train_key": "0f73582101cda4462bd4ae15", "query_key": "0aa71876db6cd79f9cfccef4",
                   "database_key": "934876186669ac9fa04d7c5d"}


def keys_of(overrides: list[str], cache: Path) -> dict[str, str]:
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, f"cache.dir={cache}"])
    data = instantiate(cfg.dataset).load(ArtifactCache(cache))
    return artifact_keys(load_job(cfg), data, "bf16", torch.device("cpu"))


@pytest.fixture
def at_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the keys were computed: the repository root (``dataset.root`` is ``data``), PQATTACK_DATA unset."""
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("PQATTACK_DATA", raising=False)


@pytest.mark.parametrize("name", [
    "demo",
    pytest.param("table1_cpu_vgg16", marks=pytest.mark.slow),
    pytest.param("table1_cpu_resnet18", marks=pytest.mark.slow),
])
def test_keys_are_the_pinned_ones(name: str, tmp_path: Path, at_repo: None) -> None:
    overrides, pinned = PINNED[name]
    if overrides[0] == "experiment=table1_cpu" and not (CIFAR / "train").is_dir():
        pytest.skip(f"CIFAR-10 JPEG copy not at {CIFAR} (make data); its keys' config part: the test below")
    assert keys_of(overrides, tmp_path / "cache") == pinned


@pytest.mark.parametrize("name", ["table1_cpu_vgg16", "table1_cpu_resnet18"])
def test_the_pinned_keys_config_part_without_the_images(name: str, tmp_path: Path, at_repo: None) -> None:
    """table1_cpu's keys from its configs and the pinned data keys (which the keys pinned above, computed from the
    images, confirm: wrong data keys would give other keys), also where CIFAR-10 is not unpacked."""
    overrides, pinned = PINNED[name]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, f"cache.dir={tmp_path / 'cache'}"])
    data = SimpleNamespace(**CIFAR_DATA_KEYS)
    assert artifact_keys(load_job(cfg), data, "bf16", torch.device("cpu")) == pinned  # type: ignore[arg-type]


def test_another_backbone_builder_is_another_checkpoint(tmp_path: Path, at_repo: None) -> None:
    """``model._target_`` other than ``models.build_backbone`` enters the checkpoint's key (and so every key after)."""
    overrides, pinned = PINNED["demo"]
    keys = keys_of([*overrides, "model._target_=my_models.build"], tmp_path / "cache")
    assert all(keys[k] != pinned[k] for k in pinned)
