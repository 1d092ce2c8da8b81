"""Every config group composes with hydra.compose; bad values fail at start-up naming the key."""

import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pqattack.config import ConfigError, validate

from .conftest import CONF

GROUPS = ["dataset", "model", "quantizer", "attack", "defense", "trainer", "logger"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml") if not p.stem.startswith("_"))


def make(overrides: list[str]):  # noqa: ANN201
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=False)


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes_and_validates(group: str, option: str) -> None:
    cfg = make([f"{group}={option}"])
    OmegaConf.resolve(cfg)
    validate(cfg)


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


def test_bits_not_a_multiple_of_M_fails_when_resolved() -> None:
    cfg = make(["bits=18"])
    with pytest.raises(Exception, match="quantizer.M"):
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
