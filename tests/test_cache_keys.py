"""Every config key is in the key of every cached artifact it determines.

The test composes every option of the dataset, model, quantizer, index, attack and trainer groups, walks every
leaf key of the composed config, changes it, and checks which artifact keys (``stages.keys.artifact_keys``) change:
- a dataset key must change the loaded content (train, query or database items) or be listed below, and the
  artifacts built from the changed part must get new keys;
- any other key must be classified in ``FEEDS`` (the first artifact it determines): that artifact and every
  one after it must get a new key, and the ones before it must not;
- keys that change no artifact are in ``stages.keys.RUN_ONLY_KEYS`` (with the reason there).
A key added to a config later fails here until it is classified.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from pqattack.attacks import LOSS_IGNORES
from pqattack.cache import ArtifactCache
from pqattack.config import CONF_DIR, load_job
from pqattack.runtime import resolve_precision
from pqattack.stages.keys import RUN_ONLY_KEYS, artifact_keys

from .fixtures import make_image_folder, make_nuswide_tree

ORDER = ("base_checkpoint", "checkpoint", "features", "codebooks", "adversarial_queries", "results")
CPU = torch.device("cpu")

#: the first artifact each non-dataset key determines ("quantizer" keys: the codebooks of K-means, PQN's checkpoint)
FEEDS: dict[str, str] = {
    "seed": "checkpoint", "precision": "checkpoint", "bits": "quantizer", "system": "results",
    "eval.topk": "results", "eval.ties": "results", "eval.empty": "results", "dataset.eval_topk": "results",
    "transfer.source": "adversarial_queries", "transfer.source_model": "adversarial_queries",
    "transfer.source_bits": "adversarial_queries",
    **{f"model.{k}": "checkpoint" for k in ("name", "arch", "batch_norm", "hidden", "dropout", "width",
                                                         "widths", "neck")},
    **{f"trainer.{k}": "checkpoint" for k in ("max_epochs", "batch_size", "lr", "momentum", "weight_decay", "nesterov",
                                              "label_smoothing", "schedule", "augment", "devices", "compile",
                                              "crop_padding", "crop_pad_mode", "warmup", "lr_start", "lr_end",
                                              "norm_lr_scale", "lookahead", "lookahead_every")},
    **{f"quantizer.{k}": "quantizer" for k in ("M", "K", "niter", "seed", "alpha", "loss", "margin", "epochs", "lr",
                                               "init_samples")},
    **{f"index.{k}": "results" for k in ("nlist", "nprobe", "train_size", "seed")},
    **{f"attack.{k}": "adversarial_queries" for k in ("name", "loss", "eps", "step", "iters", "random_start",
                                                      "quantize_8bit", "similarity", "temperature", "peak",
                                                      "batch_size", "kappa", "margin_focus", "target_class",
                                                      "temperature_final", "logit_norm", "restarts", "restart_pick",
                                                      "momentum", "diversity", "step_schedule", "eot", "dither",
                                                      "reference")},
    # an oblivious attack's queries are another set than the adaptive attack's through the transform (they are the
    # undefended model's: test_oblivious_queries_are_the_undefended_jobs)
    "attack.oblivious": "adversarial_queries",
    # a suite replaces the job's own query set by its members' (each keyed as its own job)
    "eval.suite": "adversarial_queries",
    **{f"defense.{k}": "checkpoint" for k in ("attack", "eps", "step", "iters", "random_start", "ratio", "beta",
                                              "epochs", "lr", "num_train", "trades", "code_target")},
    # a query transform changes no checkpoint or features (the database is indexed as it is): the adaptive
    # attack's queries, made through it, and the rows
    **{f"defense.{k}": "adversarial_queries" for k in ("quality", "quality_min", "depth")},
}
#: keys that choose an option of their group: the test walks every option instead
SELECTORS = ("_target_", "kind")

#: values to try for keys whose generic change (flip, +1, x0.5, ...) is not allowed; several override sets are
#: tried in order, the first one the config and the loader accept is used
CHANGES: dict[str, list[list[str]]] = {
    # the base config's precision is auto: the change is to the precision auto does not resolve to on this machine
    # (bf16 where the CPU computes it natively, fp32 elsewhere), or the keys rightly stay as they are
    "precision": [[f"precision={p}"] for p in ("fp32", "bf16") if p != resolve_precision("auto", CPU)],
    "bits": [["bits=24"]],
    "quantizer.M": [["quantizer.M=8"]],
    "quantizer.K": [["quantizer.K=32", "bits=null"]],
    "quantizer.loss": [["quantizer.loss=ce"], ["quantizer.loss=triplet"]],
    "model.arch": [["model.arch=alexnet"], ["model.arch=vgg11"], ["model.arch=alexnet", "model.neck=null"]],
    "trainer.schedule": [["trainer.schedule=constant"]],
    "trainer.crop_pad_mode": [["trainer.crop_pad_mode=zeros"]],
    "model.widths": [["model.widths=[32,128,128]"]],
    "model.hidden": [["model.hidden=512"]],  # the embedding: quantizer.M must divide it
    "model.neck": [["model.neck=bn"], ["model.neck=centre"]],
    "trainer.devices": [["trainer.devices=2"], ["trainer.devices=3"]],
    "attack.loss": [["attack.loss=aod"], ["attack.loss=apd"]],
    "attack.similarity": [["attack.similarity=cos"]],
    "attack.peak": [["attack.peak=argmax"]],
    "attack.temperature": [["attack.temperature=0.5"]],
    "attack.restart_pick": [["attack.restart_pick=oracle", "attack.restarts=2"]],
    "attack.step_schedule": [["attack.step_schedule=cosine"]],
    "attack.temperature_final": [["attack.temperature_final=0.1"]],
    "system": [["system=sdc"]],
    "eval.topk": [["eval.topk=7"], ["eval.topk=null"]],
    "dataset.eval_topk": [["dataset.eval_topk=9"]],
    "eval.ties": [["eval.ties=grouped"]],
    "eval.empty": [["eval.empty=drop"]],
    "transfer.source": [["transfer.source=some_saved_set"]],
    "transfer.source_model": [["transfer.source_model=vgg11"]],
    "transfer.source_bits": [["transfer.source_bits=24"]],
    "dataset.database": [["dataset.database=test"]],
    "dataset.num_database": [["dataset.num_database=40"]],
    "dataset.image_size": [["dataset.image_size=16"], ["dataset.image_size=16", "dataset.resize=true"]],
    "dataset.num_train": [["dataset.num_train=20"]],
    "attack.oblivious": [["attack.oblivious=true", "defense=jpeg"]],
    "attack.eot": [["attack.eot=2", "defense=jpeg_random"]],
    "attack.reference": [["attack.reference=bare", "defense=bitdepth"]],
    "eval.suite": [["eval.suite=[apd]", "attack=none"]],
    "defense.attack": [["defense.attack=basic"]],
    "defense.code_target": [["defense.code_target=true"], ["defense.code_target=true", "quantizer=pqn"]],
    "dataset.test_fraction": [["dataset.test_fraction=0.3"]],
}


def leaves(tree: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def run_only(key: str) -> bool:
    return any(key == r or key.startswith(r + ".") for r in RUN_ONLY_KEYS)


def generic_changes(key: str, value: Any) -> list[list[str]]:
    """The changes to try for ``key``: its entries in CHANGES (those that change its value), then a generic one."""
    listed = [c for c in CHANGES.get(key, []) if c[0] != f"{key}={value}" and c[0] != f"{key}={str(value).lower()}"]
    if isinstance(value, bool):
        return listed + [[f"{key}={str(not value).lower()}"]]
    if isinstance(value, int):
        return listed + [[f"{key}={value + 1}"], [f"{key}={value - 1}"]]
    if isinstance(value, float):
        return listed + [[f"{key}={value * 0.5 if value else 0.1!r}"]]
    if value is None:
        return listed + [[f"{key}=3"]]
    return listed or [[f"{key}=changed"]]


class Walk:
    """Composes configs in-process and computes their data and artifact keys."""

    def __init__(self, tmp: Path) -> None:
        self.cache = ArtifactCache(tmp / "cache")
        self.memo: dict[tuple, Any] = {}

    def compose(self, overrides: list[str]) -> DictConfig:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=overrides)
        load_job(cfg)
        return cfg

    def data(self, cfg: DictConfig) -> Any:
        key = OmegaConf.to_yaml(cfg.dataset)
        if key not in self.memo:
            self.memo[key] = instantiate(cfg.dataset).load(self.cache)
        return self.memo[key]

    def keys(self, cfg: DictConfig) -> tuple[dict[str, str], Any]:
        data = self.data(cfg)
        return artifact_keys(load_job(cfg), data, resolve_precision(cfg.precision, CPU), CPU), data

    def changed(self, base: list[str], key: str, value: Any) -> tuple[list[str], DictConfig]:
        """The first change of ``key`` that composes, validates and loads."""
        errors = []
        for change in generic_changes(key, value):
            try:
                cfg = self.compose(base + change)
                self.data(cfg)
                return change, cfg
            except Exception as exc:  # noqa: BLE001  a change the config or the loader refuses: try the next one
                errors.append(f"{change}: {type(exc).__name__}: {str(exc)[:200]}")
        raise AssertionError(f"{key}: no change of it is accepted; add one to CHANGES. Tried: {errors}")


def content(data: Any) -> dict[str, tuple]:
    return {part: (getattr(data, part).images, getattr(data, part).labels) for part in ("train", "query", "database")}


def same(a: tuple, b: tuple) -> bool:
    return all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b))


def feeds(key: str, cfg: DictConfig) -> str:
    """FEEDS[key]; an attack setting the attack's loss does not read determines only the results."""
    group, _, name = key.partition(".")
    if group == "attack" and name in LOSS_IGNORES.get(cfg.attack.loss, ()):
        return "results"
    return FEEDS[key]


def expected_from(first: str, cfg: DictConfig) -> list[str]:
    if first == "quantizer":
        first = "checkpoint" if cfg.quantizer.kind == "pqn" else "codebooks"
    return list(ORDER[ORDER.index(first):])


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("trees")
    out = {"split": root / "split", "split2": root / "split2", "flat": root / "flat", "nus": root / "nus"}
    make_image_folder(out["split"], per_class=24)
    make_image_folder(out["split2"], per_class=24, seed=1)
    make_image_folder(out["flat"], per_class=60, split=False)
    make_nuswide_tree(out["nus"], num_train=60, num_test=60)
    return out


COMMON = ["model=smallcnn", "attack=apd", "device=cpu", "progress=false", "bits=16"]


def dataset_bases(trees: dict[str, Path]) -> dict[str, list[str]]:
    small = ["dataset.num_queries=10", "dataset.num_database=20"]
    return {
        "synthetic": ["dataset=synthetic", "dataset.num_train=300", "dataset.num_test=120", *small],
        "cifar10": ["dataset=cifar10", f"dataset.root={trees['split']}", "dataset.resize=true", "dataset.num_train=40",
                    *small],
        "imagefolder": ["dataset=imagefolder", f"dataset.root={trees['flat']}", "dataset.num_train=40", *small],
        "nuswide": ["dataset=nuswide", f"dataset.root={trees['nus']}", "dataset.num_train=40", "dataset.num_queries=10",
                    "dataset.eval_topk=20"],
    }


ROOT_CHANGE = {"cifar10": "split2", "imagefolder": "split", "nuswide": None}


def test_every_dataset_key_is_in_the_keys_of_what_it_changes(tmp_path: Path, trees: dict[str, Path]) -> None:
    walk = Walk(tmp_path)
    checked = []
    for option, base in dataset_bases(trees).items():
        base = COMMON + base
        cfg0 = walk.compose(base)
        keys0, data0 = walk.keys(cfg0)
        for key, value in leaves(OmegaConf.to_container(cfg0.dataset, resolve=True), "dataset."):
            if run_only(key) or key.rsplit(".", 1)[-1] in SELECTORS:
                continue
            if key == "dataset.root":
                other = ROOT_CHANGE[option]
                if other is None:  # NUS-WIDE: a copy of the tree with one image less in the lists is another source
                    continue
                CHANGES["dataset.root"] = [[f"dataset.root={trees[other]}"]]
            change, cfg1 = walk.changed(base, key, value)
            keys1, data1 = walk.keys(cfg1)
            if key in FEEDS:
                expect = expected_from(FEEDS[key], cfg1)
            else:
                a, b = content(data0), content(data1)
                moved = [part for part in a if not same(a[part], b[part])]
                assert moved, (f"{option}: {change} loads the same items as before: list {key} in "
                               f"stages.keys.RUN_ONLY_KEYS (with the reason) or in FEEDS")
                expect = expected_from("checkpoint" if "train" in moved else "features", cfg1)
            stale = [k for k in expect if k in keys0 and keys0[k] == keys1.get(k)]
            assert not stale, f"{option}: {change} changes the data but not the keys of {stale}"
            checked.append(key)
    assert {"dataset.split_seed", "dataset.num_train", "dataset.image_size", "dataset.num_queries",
            "dataset.test_fraction", "dataset.top_concepts", "dataset.database", "dataset.noise"} <= set(checked)


GROUP_OPTIONS = {
    "model": sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml")),
    "trainer": ["default", "ddp", "fastnet", "cpu_2epoch"],
    "quantizer": ["kmeans", "pqn"],
    "index": ["flat", "ivfpq"],
    "attack": ["basic", "apd", "aod", "margin", "center", "center_targeted", "far"],
    "defense": ["adv", "jpeg", "jpeg_random", "bitdepth"],
}
SYNTHETIC = ["dataset=synthetic", "dataset.num_train=300", "dataset.num_test=120", "dataset.num_queries=10",
             "dataset.num_database=80"]


@pytest.mark.parametrize("group", [*GROUP_OPTIONS, "top-level"])
def test_every_other_key_is_in_the_key_of_each_artifact_it_determines(tmp_path: Path, group: str) -> None:
    walk = Walk(tmp_path)
    options = GROUP_OPTIONS.get(group, [None])
    for option in options:
        base = COMMON + SYNTHETIC + ([f"{group}={option}"] if option else [])
        if option == "ivfpq":
            base += ["system=adc", "eval.topk=10", "index.nlist=4", "index.nprobe=2", "index.train_size=60"]
        if option == "pqn":
            base += ["quantizer.init_samples=100"]
        cfg0 = walk.compose(base)
        keys0, _ = walk.keys(cfg0)
        tree = OmegaConf.to_container(cfg0, resolve=True)
        pairs = (leaves(tree[group], f"{group}.") if option else
                 ((k, v) for k, v in leaves(tree) if k.split(".")[0] not in GROUP_OPTIONS and
                  not k.startswith("dataset.")))
        for key, value in pairs:
            if run_only(key) or key.rsplit(".", 1)[-1] in SELECTORS:
                continue
            assert key in FEEDS, (f"{key} (from {group}={option}) is not classified: add it to FEEDS in this test with "
                                  f"the first artifact it determines, or to stages.keys.RUN_ONLY_KEYS with the reason")
            change, cfg1 = walk.changed(base, key, value)
            keys1, _ = walk.keys(cfg1)
            # a change that needs other settings too (attack.eot with a random transform) is compared with those
            # settings alone, so that they cannot move the keys for it
            ref = keys0 if len(change) == 1 else walk.keys(walk.compose(base + change[1:]))[0]
            expect = expected_from(feeds(key, cfg0), cfg1)
            stale = [k for k in expect if k in ref and ref[k] == keys1.get(k)]
            assert not stale, f"{change} (over {group}={option}) leaves the keys of {stale} unchanged"
            moved = [k for k in ORDER if k not in expect and k in ref and ref[k] != keys1.get(k)]
            assert not moved, f"{change} (over {group}={option}) changes the keys of {moved} too, which it cannot affect"


def test_a_new_train_subset_is_a_new_backbone(tmp_path: Path, trees: dict[str, Path]) -> None:
    """Two jobs on CIFAR-10 layout data with dataset.num_train=30 and split seeds 0 and 1 train on different images,
    so they must not share a checkpoint (nor features, codebooks, adversarial queries)."""
    walk = Walk(tmp_path)
    base = COMMON + ["dataset=cifar10", f"dataset.root={trees['split']}", "dataset.resize=true", "dataset.num_train=30",
                     "dataset.num_queries=10", "dataset.num_database=20"]
    k0, d0 = walk.keys(walk.compose(base + ["dataset.split_seed=0"]))
    k1, d1 = walk.keys(walk.compose(base + ["dataset.split_seed=1"]))
    assert not torch.equal(d0.train.index, d1.train.index)
    assert all(k0[k] != k1[k] for k in ("checkpoint", "features", "codebooks", "adversarial_queries", "results"))


def test_oblivious_queries_are_the_undefended_jobs(tmp_path: Path) -> None:
    """attack.oblivious=true behind a query transform: the queries are made without it, so they are the undefended
    job's query set (one artifact, made once), not the adaptive attack's; the rows differ."""
    walk = Walk(tmp_path)
    base = COMMON + SYNTHETIC
    plain, _ = walk.keys(walk.compose(base))
    oblivious, _ = walk.keys(walk.compose(base + ["defense=jpeg", "attack.oblivious=true"]))
    adaptive, _ = walk.keys(walk.compose(base + ["defense=jpeg"]))
    assert oblivious["adversarial_queries"] == plain["adversarial_queries"] != adaptive["adversarial_queries"]
    assert oblivious["results"] != plain["results"]


def test_attack_batch_size_is_in_the_query_set_key(tmp_path: Path) -> None:
    walk = Walk(tmp_path)
    base = COMMON + SYNTHETIC
    k0, _ = walk.keys(walk.compose(base + ["attack.batch_size=5"]))
    k1, _ = walk.keys(walk.compose(base + ["attack.batch_size=10"]))
    assert k0["adversarial_queries"] != k1["adversarial_queries"] and k0["checkpoint"] == k1["checkpoint"]


def test_a_job_uses_exactly_the_keys_artifact_keys_computes(tmp_path: Path) -> None:
    """``artifact_keys`` (what the walk above checks) is what a real job uses: run one and compare."""
    from pqattack.pipeline import run  # a whole job, as `python -m pqattack` runs it

    walk = Walk(tmp_path)
    cfg = walk.compose(COMMON + SYNTHETIC + ["trainer.max_epochs=1", "trainer.batch_size=64",
                                             f"cache.dir={tmp_path / 'cache'}", "attack.batch_size=10"])
    import json

    meta = json.loads(run(cfg, tmp_path / "out").read_text())["meta"]
    keys, _ = walk.keys(cfg)
    assert {k: meta["cache_keys"][k] for k in ("checkpoint", "features", "codebooks", "adversarial_queries")} == \
        {k: keys[k] for k in ("checkpoint", "features", "codebooks", "adversarial_queries")}


def test_an_option_added_off_keeps_existing_keys(tmp_path: Path) -> None:
    """A new recipe or attack option whose value is off (null, false, 0) leaves every key as it was, so adding
    options to the configs does not invalidate the checkpoints and query sets already in caches; switched on, it
    is in the keys."""
    walk = Walk(tmp_path)
    base = COMMON + SYNTHETIC
    k0, _ = walk.keys(walk.compose(base))
    off, _ = walk.keys(walk.compose(base + ["+trainer.new_option=null", "+attack.new_option=0"]))
    on, _ = walk.keys(walk.compose(base + ["+trainer.new_option=0.5", "+attack.new_option=true"]))
    assert off == k0
    assert on["checkpoint"] != k0["checkpoint"] and on["adversarial_queries"] != k0["adversarial_queries"]


def test_target_class_zero_is_not_a_random_target(tmp_path: Path) -> None:
    """``attack.target_class`` null draws a random other class per query, 0 targets class 0: two query sets and two
    results, not one key for both (0 is not "off" here)."""
    walk = Walk(tmp_path)
    base = COMMON + SYNTHETIC + ["attack=center_targeted"]
    random_target, _ = walk.keys(walk.compose(base))
    class0, _ = walk.keys(walk.compose(base + ["attack.target_class=0"]))
    class1, _ = walk.keys(walk.compose(base + ["attack.target_class=1"]))
    for kind in ("adversarial_queries", "results"):
        assert len({random_target[kind], class0[kind], class1[kind]}) == 3, kind
    assert random_target["checkpoint"] == class0["checkpoint"]


@pytest.mark.parametrize("loss", ["apd", "basic"])
def test_an_oracle_restart_pick_keys_what_the_oracle_reads(tmp_path: Path, loss: str) -> None:
    """``attack.restart_pick=oracle`` picks each query's restart by its AP on the source's index, averaged over the
    job's systems: the systems, the database and the codebooks (the feature attack's too) enter the query set's
    key. The pick by the attacker's loss reads none of them."""
    walk = Walk(tmp_path)
    oracle = COMMON + SYNTHETIC + [f"attack={loss}", "attack.restarts=2", "attack.restart_pick=oracle"]
    plain = COMMON + SYNTHETIC + [f"attack={loss}", "attack.restarts=2"]
    for base, reads in ((oracle, True), (plain, False)):
        k0, _ = walk.keys(walk.compose(base))
        for change in (["system=sdc"], ["dataset.num_database=25"], ["bits=24"]):
            k1, _ = walk.keys(walk.compose(base + change))
            # APD's codebooks are K-means on the database features: a new database or K is a new set anyway
            reads_it = reads or (change != ["system=sdc"] and loss != "basic")
            assert (k0["adversarial_queries"] != k1["adversarial_queries"]) == reads_it, (base, change)


@pytest.mark.parametrize("change", [["+trainer.crop_padding=0"],
                                    ["trainer.schedule=triangle", "+trainer.warmup=0"],
                                    ["trainer.schedule=triangle", "+trainer.lr_start=0"]])
def test_a_recipe_option_at_zero_is_not_the_module_default(tmp_path: Path, change: list[str]) -> None:
    """A recipe option absent from the trainer config trains with the module's default (crop padding 4, warmup
    0.25, start at 0.2 of the peak lr); set to 0 it trains differently, so it is a new checkpoint. An option at
    the module's off default (``lr_end=0``, ``lookahead=0``) stays out of the key."""
    walk = Walk(tmp_path)
    base = COMMON + SYNTHETIC + change[:-1]
    absent, _ = walk.keys(walk.compose(base))
    zero, _ = walk.keys(walk.compose(base + change[-1:]))
    assert absent["checkpoint"] != zero["checkpoint"]
    for off in ("+trainer.lr_end=0", "+trainer.lookahead=0"):
        assert walk.keys(walk.compose(base + [off]))[0]["checkpoint"] == absent["checkpoint"], off


def test_rows_of_a_class_0_target_name_class_0() -> None:
    """A set made with ``attack.target_class=0`` carries 0 into its rows' ``target_class``, not None (which reads as a
    random class per query): "off" is one rule (``stages.keys.is_off``) for keys and rows alike."""
    from types import SimpleNamespace

    from pqattack.records import attack_settings as row_settings

    made = {"loss": "center_targeted", "target_class": 0, "kappa": 0.0}
    fields = row_settings(SimpleNamespace(meta={"attack": made}))
    assert fields["target_class"] == 0 and fields["kappa"] is None
    assert row_settings(SimpleNamespace(meta={"attack": {**made, "target_class": None}}))["target_class"] is None
