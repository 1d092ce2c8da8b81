"""Every config group composes with hydra.compose; bad values fail at start-up naming the key."""

import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pqattack.config import ConfigError, validate

from .conftest import CONF

#: every config group (presets: test_experiments_compose; Hydra's own settings: conf/hydra)
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name not in ("experiment", "hydra", "__pycache__"))
#: what an option needs besides itself to pass the start-up checks
NEEDS = {("index", "ivfpq"): ["system=adc", "eval.topk=100"]}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml") if not p.stem.startswith("_"))


def make(overrides: list[str]):  # noqa: ANN201
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=False)


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes_and_validates(group: str, option: str) -> None:
    cfg = make([f"{group}={option}", *NEEDS.get((group, option), [])])
    OmegaConf.resolve(cfg)
    validate(cfg)


def test_the_groups_are_all_there() -> None:
    assert {"attack", "dataset", "defense", "index", "logger", "model", "quantizer", "trainer"} <= set(GROUPS)


@pytest.mark.parametrize("experiment", options("experiment"))
def test_experiments_compose(experiment: str) -> None:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"experiment={experiment}"], return_hydra_config=True)
    assert cfg.hydra.mode is not None
    validate(cfg)


@pytest.mark.parametrize("bits,K", [(16, 16), (24, 64), (32, 256), (36, 512)])
def test_bits_choose_K_with_M_4(bits: int, K: int) -> None:  # noqa: N803
    cfg = make([f"bits={bits}"])
    assert (cfg.quantizer.M, cfg.quantizer.K) == (4, K)


def test_default_is_the_paper_setting() -> None:
    cfg = make([])
    assert (cfg.dataset.name, cfg.model.arch, cfg.attack.name) == ("cifar10", "vgg16", "aod")
    assert (cfg.quantizer.M, cfg.quantizer.K) == (4, 64)
    assert cfg.attack.eps == pytest.approx(8 / 255) and cfg.attack.step == 0.01 and cfg.attack.iters == 5
    assert (cfg.dataset.num_queries, cfg.dataset.num_database) == (1000, 9000)
    assert cfg.trainer.label_smoothing == 0.0


def test_m_and_k_can_be_set_directly() -> None:
    cfg = make(["quantizer.M=8", "quantizer.K=256"])
    validate(cfg)
    assert (cfg.quantizer.M, cfg.quantizer.K) == (8, 256)


@pytest.mark.parametrize("overrides,key", [
    (["bits=20", "quantizer.K=64"], "bits=20"),
    (["quantizer.K=16384"], "quantizer.K"),
    (["attack.eps=0"], "attack.eps"),
    (["attack.eps=2"], "attack.eps"),
    (["attack.step=-1"], "attack.step"),
    (["attack.iters=0"], "attack.iters"),
    (["dataset.num_queries=2000"], "dataset.num_queries"),
    (["device=tpu"], "device"),
    (["device=cuda:99"], "device"),
    (["system=hamming"], "system"),
    (["attack.similarity=l1"], "attack.similarity"),
    (["eval.ties=random"], "eval.ties='random': expected one of expected, grouped"),
    (["eval.empty=skip"], "eval.empty='skip': expected one of zero, drop"),
])
def test_bad_values_name_the_key(overrides: list[str], key: str) -> None:
    cfg = make(overrides)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(cfg)


@pytest.mark.parametrize("overrides,message", [
    # a wrong type: one error naming the key, before anything compares or resolves it
    (["bits=abc"], "bits='abc': expected an integer"),
    (["bits=24.5"], "bits=24.5: expected an integer"),
    (["bits=true"], "bits=True: expected an integer"),
    (["seed=abc"], "seed='abc': expected an integer"),
    (["dataset.num_queries=abc"], "dataset.num_queries='abc': expected an integer"),
    (["eval.batch_size=2.5"], "eval.batch_size=2.5: expected an integer"),
    (["progress=maybe"], "progress='maybe': expected auto (when stderr is a terminal), true or false"),
    (["trainer.lr=abc"], "trainer.lr='abc': expected a number"),
    # a value out of range, that torch or a resolver would refuse only once training starts
    (["bits=-8"], "bits=-8: must be >= 1"),
    (["bits=18"], "bits=18: must be a positive multiple of quantizer.M=4"),
    (["log_level=bogus"], "log_level='bogus': expected one of debug"),
    (["trainer.lr=-1"], "trainer.lr=-1: must be > 0"),
    (["trainer.lr=0"], "trainer.lr=0: must be > 0"),
    (["trainer.momentum=1.5"], "trainer.momentum=1.5: must be in [0, 1)"),
    (["trainer.weight_decay=-1"], "trainer.weight_decay=-1: must be >= 0"),
    (["trainer.max_epochs=0"], "trainer.max_epochs=0: must be >= 1"),
    (["eval.batch_size=0"], "eval.batch_size=0: must be >= 1"),
    (["eval.topk=0"], "eval.topk=0: must be >= 1"),
    (["dataset.num_database=0"], "dataset.num_database=0: must be >= 1"),
    (["trainer.batch_size=1"], "trainer.batch_size=1: must be >= 2"),
    (["trainer.compile=maybe"], "trainer.compile='maybe': expected true or false"),
    (["experiment=table4_fast_cpu", "recipes.fastnet.lr=-1"], "recipes.fastnet.lr=-1: must be > 0"),
    (["trainer.label_smoothing=5"], "trainer.label_smoothing=5: must be in"),
    (["dataset.num_train=-5"], "dataset.num_train=-5: must be >= 1"),
    (["dataset.num_train=60000"], "dataset.num_train=60000: dataset=cifar10 has 50000 training images"),
    (["dataset.image_size=0"], "dataset.image_size=0: must be >= 1"),
    (["model=smallcnn", "model.width=-4"], "model.width=-4: must be >= 1"),
    (["model=alexnet", "model.dropout=2"], "model.dropout=2: must be in [0, 1)"),
    (["model=fastnet", "model.widths=[]"], "model.widths=[]: expected a non-empty list"),
    # a value the backbone or K-means would refuse after training
    (["quantizer.M=3"], "quantizer.M=3: must divide the 512-d embedding of model=vgg16"),
    (["model=smallcnn", "quantizer.M=6", "quantizer.K=16"], "quantizer.M=6: must divide the 128-d embedding"),
    (["attack=aod", "transfer.source_bits=68"], "transfer.source_bits=68: must be a multiple of quantizer.M=4 with"),
    (["attack=aod", "transfer.source_bits=40", "dataset.num_database=500"],
     "transfer.source_bits=40: 1024 codewords per sub-space, more than dataset.num_database=500"),
    (["quantizer=pqn", "quantizer.margin=-1"], "quantizer.margin=-1.0: must be >= 0"),
    (["dataset=synthetic", "dataset.noise=-1"], "dataset.noise=-1: must be >= 0"),
    (["attack=none", "transfer.source_model=resnet18"], "transfer.* with attack=none"),
    (["dataset.num_train=1000", "defense=adv", "defense.num_train=2000"],
     "defense.num_train=2000: more than the 1000 training images"),
    (["defense=adv", "defense.num_train=100000"], "defense.num_train=100000: more than the 50000 training images"),
    # a robust evaluation's members, each checked as its own job
    (["attack=none", 'eval.suite=["center_targeted target_class=20"]'],
     "eval.suite member 'center_targeted target_class=20': attack.target_class=20: dataset=cifar10 has 10 classes"),
    (["attack=none", 'eval.suite=["apd iters=-1"]'], "eval.suite member 'apd iters=-1': attack.iters=-1"),
    (["attack=none", 'eval.suite=["apd oblivious=true"]'], "no member applies to defense=none"),
    (["attack=none", 'eval.suite=[""]'], "eval.suite member '': empty"),
    (["attack=none", "eval.suite=apd"], "eval.suite='apd': expected a list of attacks"),
    (["attack=none", 'eval.suite=[apd,"apd iters=5"]'], "members 'apd' and 'apd iters=5' are the same attack"),
    (["attack=none", 'eval.suite=["apd iters=5 iters=6"]'], "iters is set twice"),
])
def test_bad_values_are_one_config_error_before_any_compute(overrides: list[str], message: str) -> None:
    cfg = make(overrides)
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(cfg)


def test_a_missing_saved_query_set_is_refused_at_start_up(tmp_path: Path) -> None:
    from pqattack.errors import QuerySetError

    from pqattack.config import check_inputs, load_job

    cfg = make(["attack=aod", f"transfer.source={tmp_path / 'nothing'}", f"cache.dir={tmp_path / 'cache'}"])
    job = load_job(cfg)  # a finished job's config still loads (the report reloads them), ...
    with pytest.raises(QuerySetError, match="transfer.source=.*nothing: neither a folder nor a key"):
        check_inputs(job)  # ... but a job about to run stops (the command and a sweep's check call this)
    assert not (tmp_path / "cache").exists()


def test_embedding_dim_is_the_built_backbones() -> None:
    """The config check's embedding sizes (``models.backbones.embedding_dim``) against each backbone as built."""
    from pqattack.models.backbones import ARCHITECTURES, build_backbone, embedding_dim

    for arch in ARCHITECTURES:
        for options in ({}, {"hidden": 256, "width": 8, "widths": (16, 32, 48)}):
            assert embedding_dim(arch, **options) == build_backbone(arch, 10, **options).embed_dim, (arch, options)


def test_bits_not_a_multiple_of_M_fails_when_resolved() -> None:
    cfg = make(["bits=18"])
    with pytest.raises(Exception, match=re.escape("bits=18: must be a positive multiple of quantizer.M=4")):
        OmegaConf.resolve(cfg)


def test_configs_are_package_data() -> None:
    """The configs ship inside the package (``pqattack/conf``), so an installed wheel finds them."""
    import pqattack
    from pqattack.config import CONF_DIR

    assert CONF_DIR == Path(pqattack.__file__).parent / "conf" == CONF
    assert (CONF_DIR / "config.yaml").is_file()


def test_help_lists_every_config_group() -> None:
    """`pqattack --help` names each group under conf/ (the defense group included) with its options."""
    from omegaconf import OmegaConf

    from pqattack.config import CONF_DIR

    help_cfg = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "hydra" / "help" / "pqattack.yaml"), resolve=False)
    template = help_cfg["template"]
    groups = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name not in ("hydra", "__pycache__"))
    assert "defense" in groups
    missing = [g for g in groups if not re.search(rf"^\s+{g}:\s+\$\{{pqattack_options:{g}\}}$", template, re.M)]
    assert not missing, f"groups missing from conf/hydra/help/pqattack.yaml: {missing}"
