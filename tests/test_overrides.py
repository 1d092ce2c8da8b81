"""The command line's overrides are composed before Hydra runs anything (``overrides.check_command_line``): an
unknown option or key, a value of the wrong type or a malformed override is one line naming the key and what is
allowed. In-process, but for the one subprocess that checks the command's own exit code and what it leaves."""

from pathlib import Path

import pytest

from pqattack.errors import ConfigError
from pqattack.overrides import check_command_line

from .conftest import TINY, run_cli


@pytest.mark.parametrize("argv,message", [
    (["attack=foo"], "attack=foo: not an option of attack; allowed: aod, apd, basic, center,"),
    (["experiment=nope"], "experiment=nope: not an option of experiment; allowed: beyond, beyond_cpu,"),
    (["attack.iterations=5"], "attack.iterations: no such key; did you mean attack.iters?"),
    (["trainer.max_epoch=3"], "trainer.max_epoch: no such key; did you mean trainer.max_epochs?"),
    (["model=vgg16", "model.hiden=3"], "model.hiden: no such key; model has: arch, batch_norm, name"),
    (["nosuch=1"], "nosuch: no such key; `python -m pqattack --cfg job` lists all"),
    (["attack.iters=abc"], "attack.iters=abc: Value 'abc' of type 'str' could not be converted to Integer"),
    (["defense=adv", "defense.eps=x"], "defense.eps=x: Value 'x' of type 'str' could not be converted to Float"),
    (["attack.eps=["], "override 'attack.eps=[': no viable alternative at input '['"),
    (["attack.eps=0.1", "attack.eps=abc"], "attack.eps=abc: Value 'abc'"),  # the override that failed, not the first
    # a sweep: composed as Hydra composes it, without the swept values (its own check then composes every job)
    (["-m", "attack.kapa=1", "bits=16,24"], "attack.kapa: no such key; did you mean attack.kappa?"),
    (["-m", "model=fastnet,fastnet_bn", "model.widths=[32,128,128]"],
     "model.widths: no such key in the default model option; a sweep over model is composed with its default option "
     "first (Hydra's rule)"),
])
def test_overrides_that_do_not_compose_are_one_line(argv: list[str], message: str) -> None:
    """Hydra said each of these in several lines (its config search path, the groups' private ``_pgd``/``_schema``
    files among the options, advice to add the key with ``+``), exit 1."""
    tiny = [o for o in TINY if o != "model.width=8"]  # a key of smallcnn's only
    with pytest.raises(ConfigError) as err:
        check_command_line([*argv[:1], *tiny, *argv[1:]] if argv[0] == "-m" else [*tiny, *argv])
    text = str(err.value)
    assert text.startswith(message), text
    assert "\n" not in text and "_pgd" not in text and "_schema" not in text and "+attack.iterations" not in text


@pytest.mark.parametrize("argv", [
    ["attack=apd", "attack.iters=10"], ["-m", "attack=apd,aod", "bits=16,24"], ["+attack.restarts=2"],
    ["--cfg", "job", "attack=foo"],  # Hydra's own flags stay Hydra's
    ["--config-dir", "elsewhere", "attack=mine"],  # a user's config folder may hold options of its own
    # sweeps without -m: presets that set hydra.mode MULTIRUN (the demo, the tables), and hydra.mode itself
    ["experiment=demo", "attack=basic,apd"], ["hydra.mode=MULTIRUN", "attack=apd,aod"],
    ["-m", "attack=apd,foo"],  # a bad swept value: the sweep's own check names it (tests/test_cli.py)
    ["-m", "hydra.sweeper.params.bits=16,24"],  # an error outside composing: Hydra's own one line, as before
])
def test_overrides_that_compose_pass(argv: list[str]) -> None:
    check_command_line([*argv[:1], *TINY, *argv[1:]] if argv[0] == "-m" else [*TINY, *argv])


@pytest.mark.parametrize("added,message", [
    ("+attack.kapa=1", "attack.kapa: not a setting of attack (AttackConfig would ignore it); did you mean attack.kappa?"),
    ("++attack.kapa=1", "attack.kapa: not a setting of attack"), ("+attack.foo.bar=1", "attack.foo: not a setting"),
    ("++index.nlsit=3", "index.nlsit: not a setting of index (IndexConfig would ignore it); did you mean index.nlist?"),
    ("+quantizer.alpah=3", "quantizer.alpah: not a setting of quantizer (KMeansConfig would ignore it)"),
])
def test_a_key_added_where_a_schema_would_drop_it_is_a_start_up_error(added: str, message: str) -> None:
    """``+``/``++`` add a key to any node; the attack, quantizer, index and defense nodes are read through their
    dataclasses, which dropped such a key without a word (the job ran without ``kappa``)."""
    from pqattack.config import check_inputs, load_job

    from .conftest import compose_config

    with pytest.raises(ConfigError) as err:
        check_inputs(load_job(compose_config([*TINY, added])))
    assert str(err.value).startswith(message), err.value


def test_progress_takes_auto_true_or_false_only() -> None:
    """``progress=1`` equals ``true`` in Python, and passed a check for membership in (auto, true, false)."""
    from pqattack.config import validate

    from .conftest import compose_config

    for value in ("auto", "true", "false"):
        validate(compose_config([*TINY, f"progress={value}"]))
    for value in ("1", "0", "1.0"):
        with pytest.raises(ConfigError, match="progress=.*expected auto"):
            validate(compose_config([*TINY, f"progress={value}"]))


def test_an_unknown_backbone_setting_is_a_start_up_error() -> None:
    """``+model.bar=1`` composed and the job failed at the backbone's build, after the data was loaded, with a
    traceback (the model node has no schema: its keys are the builder's arguments)."""
    from pqattack.config import validate

    from .conftest import compose_config

    with pytest.raises(ConfigError, match=r"model.bar: not a setting of model=smallcnn; the backbones take arch"):
        validate(compose_config([*TINY, "+model.bar=1"]))


def test_the_command_exits_2_with_one_line_and_writes_nothing(tmp_path: Path) -> None:
    proc = run_cli([*TINY, "model=vgg99"], tmp_path, tmp_path / "cache", check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "config error: model=vgg99: not an option of model; allowed: alexnet, fastnet, fastnet_bn, fastnet_centre, "
        "fastnet_narrow, resnet18, resnet34, resnet50, smallcnn, vgg11, vgg13, vgg16"]
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "cache").exists()
