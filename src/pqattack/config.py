"""The config: the schemas Hydra checks types against, and the start-up checks. Bad input fails in
``load_job``, before any compute, with the key, the value and what is allowed (``ConfigError``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .attacks.config import AttackConfig
from .data.synthetic import SHAPES
from .defense.config import SCHEMAS as DEFENSE_SCHEMAS
from .defense.config import SOFT_TRAINING_ATTACKS, AdversarialTrainingConfig, DefenseConfig, defense_config
from .errors import ConfigError, PQAttackError
from .models.augment import PAD_MODES
from .models.backbones import ARCHITECTURES, build_backbone, embedding_dim
from .models.fastnet import NECKS
from .models.recipe import SCHEDULES
from .quant.config import IndexConfig, KMeansConfig, PQNConfig
from .runtime import PRECISIONS, resolve_device

CONF_DIR = Path(__file__).with_name("conf")  # package data; `--config-dir` adds a user's own folder
TEST_SPLIT_SIZE = {"cifar10": 10_000}
TRAIN_SPLIT_SIZE = {"cifar10": 50_000}
TEST_CLASSES = {"cifar10": 10}
SYSTEMS = {"sdc": ["sdc"], "adc": ["adc"], "both": ["sdc", "adc"]}


def _pq_k(bits: int | None, M: int, default: int) -> int:  # noqa: N803
    """``quantizer.K`` from the top-level ``bits``: K = 2^(bits / M)."""
    if bits is None:
        return default
    if int(bits) < 1 or int(bits) % int(M):
        raise ConfigError(f"bits={bits}: must be a positive multiple of quantizer.M={M} (bits = M * log2(K))")
    return 2 ** (int(bits) // int(M))


def _code_name(*, _root_: DictConfig) -> str:
    """``MxK`` (``4x64``) for the names of run folders, or ``MxK-invalid`` where ``quantizer.K`` does not resolve
    (``bits=7``, ``bits=abc``): Hydra names the folder before the job runs, and the job's config check then stops it
    with the reason, instead of Hydra with a traceback."""
    try:
        return f"{_root_.quantizer.M}x{_root_.quantizer.K}"
    except Exception:  # noqa: BLE001  any resolution error: the config check reports it
        return "MxK-invalid"


def _options(group: str) -> str:
    """The public options of a config group (for ``--help``): its YAML files not starting with ``_``."""
    return ", ".join(sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml") if not p.stem.startswith("_")))


def register() -> None:
    """The ``pq_k``, ``pq_code_name`` and ``pqattack_options`` resolvers, and the schemas the group YAML files extend."""
    if not OmegaConf.has_resolver("pq_k"):
        OmegaConf.register_new_resolver("pq_k", _pq_k)
    if not OmegaConf.has_resolver("pq_code_name"):
        OmegaConf.register_new_resolver("pq_code_name", _code_name)
    if not OmegaConf.has_resolver("pqattack_options"):
        OmegaConf.register_new_resolver("pqattack_options", _options)
    cs = ConfigStore.instance()
    cs.store(group="attack", name="_schema", node=AttackConfig)
    cs.store(group="quantizer", name="_kmeans_schema", node=KMeansConfig)
    cs.store(group="quantizer", name="_pqn_schema", node=PQNConfig)
    cs.store(group="index", name="_schema", node=IndexConfig)
    for kind, schema in DEFENSE_SCHEMAS.items():
        cs.store(group="defense", name=f"_{kind}_schema", node=schema)


register()


def _check_recipes(cfg: DictConfig) -> None:
    """A preset that trains each model with its own recipe (``recipes.<model name>``, with
    ``trainer: ${recipes.${model.name}}``) must hold one for the target and for the transfer source."""
    recipes = cfg.get("recipes")
    if recipes is None:
        return
    from .transfer import source_models

    t = container(cfg.get("transfer") or OmegaConf.create({}))
    for key, names in (("model", [cfg.model.name]), ("transfer.source_model", source_models(t) or [])):
        value = names[0] if len(names) == 1 else f"[{', '.join(names)}]"  # an ensemble: each member needs one
        for name in names:
            if name not in recipes:
                raise ConfigError(f"{key}={value}: this preset trains each model with its recipe in `recipes`, which "
                                  f"has none for {name!r} (only {', '.join(recipes)}); add "
                                  f"/trainer@recipes.{name}: <recipe> to its defaults")
    for name, recipe in recipes.items():
        _check_trainer(recipe, f"recipes.{name}", cfg.dataset.get("image_size", 32))


def _check_trainer(tr: DictConfig, key: str, image_size: int) -> None:
    """The recipe's values (``key``: ``trainer`` or ``recipes.<model>``)."""
    _check_values(tr, key, RECIPE_VALUES)
    if tr.schedule not in SCHEDULES:
        raise ConfigError(f"{key}.schedule={tr.schedule!r}: expected one of {', '.join(SCHEDULES)}")
    if not 0 <= tr.get("warmup", 0) < 1:
        raise ConfigError(f"{key}.warmup={tr.warmup}: must be in [0, 1) (a fraction of the steps)")
    for name in ("lr_start", "lr_end"):
        if tr.get(name, 0) < 0:
            raise ConfigError(f"{key}.{name}={tr[name]}: must be >= 0 (a fraction of {key}.lr)")
    if tr.get("norm_lr_scale", 1) <= 0:
        raise ConfigError(f"{key}.norm_lr_scale={tr.norm_lr_scale}: must be > 0")
    if not 0 <= tr.get("lookahead", 0) < 1 or tr.get("lookahead_every", 1) < 1:
        raise ConfigError(f"{key}.lookahead={tr.get('lookahead')}, {key}.lookahead_every={tr.get('lookahead_every')}: "
                          f"lookahead must be in [0, 1) (0: off) and lookahead_every >= 1")
    if tr.get("crop_pad_mode", "zeros") not in PAD_MODES:
        raise ConfigError(f"{key}.crop_pad_mode={tr.crop_pad_mode!r}: expected one of {', '.join(PAD_MODES)}")
    if not 0 <= tr.get("crop_padding", 0) < image_size:
        raise ConfigError(f"{key}.crop_padding={tr.get('crop_padding', 0)}: must be in [0, {image_size}) "
                          f"(dataset.image_size)")


# (key, type, allowed range): each checked where the config has the key (and it is not null), before anything reads
# it, so a wrong type or range is one ConfigError naming the key, not a comparison's TypeError after data loading.
AT_LEAST_1, AT_LEAST_2, POSITIVE, NON_NEGATIVE, FRACTION = ">= 1", ">= 2", "> 0", ">= 0", "in [0, 1)"
SEED_RANGE = "in [0, 2^32)"  # a seed: what numpy's generators accept
RANGES = {AT_LEAST_1: lambda v: v >= 1, AT_LEAST_2: lambda v: v >= 2, POSITIVE: lambda v: v > 0,
          NON_NEGATIVE: lambda v: v >= 0, FRACTION: lambda v: 0 <= v < 1, None: lambda v: True,
          SEED_RANGE: lambda v: 0 <= v < 2**32}
RECIPE_VALUES = [("max_epochs", int, AT_LEAST_1), ("batch_size", int, AT_LEAST_2),  # 2: batch norm
                 ("lr", float, POSITIVE), ("momentum", float, FRACTION), ("weight_decay", float, NON_NEGATIVE),
                 ("label_smoothing", float, FRACTION), ("nesterov", bool, None), ("augment", bool, None),
                 ("compile", bool, None)]
JOB_VALUES = [("seed", int, SEED_RANGE), ("bits", int, AT_LEAST_1), ("resume", bool, None),
              ("cache.enabled", bool, None), ("dataset.num_queries", int, AT_LEAST_1),
              ("dataset.num_database", int, AT_LEAST_1), ("dataset.num_train", int, AT_LEAST_1),
              ("dataset.num_test", int, AT_LEAST_1), ("dataset.image_size", int, AT_LEAST_1),
              ("dataset.split_seed", int, None), ("dataset.download", bool, None), ("dataset.resize", bool, None),
              ("dataset.seed", int, SEED_RANGE), ("dataset.num_classes", int, AT_LEAST_2),
              ("dataset.noise", float, NON_NEGATIVE), ("dataset.hue_jitter", float, NON_NEGATIVE),
              ("eval.topk", int, AT_LEAST_1), ("eval.batch_size", int, AT_LEAST_1),
              ("transfer.source_bits", int, AT_LEAST_1), ("model.width", int, AT_LEAST_1),
              ("model.hidden", int, AT_LEAST_1), ("model.dropout", float, FRACTION)]
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _check_values(node: DictConfig, prefix: str, table: list[tuple[str, type, str | None]]) -> None:
    """Each ``table`` key that ``node`` holds, unless null: of its type (an int is a number too) and in its range;
    ``prefix`` names ``node`` in the message."""
    for name, kind, allowed in table:
        parent, _, leaf = name.rpartition(".")
        holder = OmegaConf.select(node, parent) if parent else node
        value = holder.get(leaf) if isinstance(holder, DictConfig) else None
        if value is None:
            continue
        key = f"{prefix}.{name}" if prefix else name
        if kind is bool:
            if not isinstance(value, bool):
                raise ConfigError(f"{key}={value!r}: expected true or false")
            continue
        number = isinstance(value, int) or (kind is float and isinstance(value, float) and math.isfinite(value))
        if isinstance(value, bool) or not number:
            raise ConfigError(f"{key}={value!r}: expected {'an integer' if kind is int else 'a number'}")
        if not RANGES[allowed](value):
            raise ConfigError(f"{key}={value}: must be {allowed}")


def _check_model(model: DictConfig, M: int) -> None:  # noqa: N803
    """The model's options, and that its embedding splits into ``M`` sub-vectors."""
    widths = model.get("widths")
    if widths is not None and (not len(widths) or any(not isinstance(w, int) or w < 1 for w in widths)):
        raise ConfigError(f"model.widths={list(widths)}: expected a non-empty list of positive integers")
    if model.get("_target_") == "pqattack.models.build_backbone":  # a user's own builder takes what it takes
        import inspect

        takes = [p for p in inspect.signature(build_backbone).parameters if p != "num_classes"]
        extra = sorted(str(k) for k in model if k not in ("_target_", "name", *takes))
        if extra:
            raise ConfigError(f"model.{extra[0]}: not a setting of model={model.get('name', model.arch)}; the "
                              f"backbones take {', '.join(takes)}")
    dim = embedding_dim(model.arch, **{k: model[k] for k in ("hidden", "width", "widths") if k in model})
    if dim % M:
        name = model.get("name", model.arch)
        raise ConfigError(f"quantizer.M={M}: must divide the {dim}-d embedding of model={name} (M sub-vectors of "
                          f"equal size)")


def compose_config(overrides: list[str], with_hydra: bool = False) -> DictConfig:
    """The config ``python -m pqattack <overrides>`` composes: through the running app's Hydra when there is one
    (so a user's ``--config-dir`` counts), else from the package's ``conf``; ``with_hydra``: Hydra's own node too."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose("config", overrides=overrides, return_hydra_config=with_hydra)
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=with_hydra)


def container(cfg: DictConfig) -> dict[str, Any]:
    """A resolved plain-dict copy of a config node."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


@dataclass
class JobConfig:
    """One job's settings, typed and checked: what the pipeline's stages take instead of the raw config."""

    config: DictConfig  # the whole resolved config, for the records and the results key
    model: dict[str, Any]  # model.* (arch and its options; ``name`` labels it)
    trainer: dict[str, Any]  # trainer.*: the recipe, and where training runs (strategy, devices, num_nodes)
    quantizer: KMeansConfig  # a PQNConfig for quantizer=pqn
    index: IndexConfig
    attack: AttackConfig
    systems: list[str]
    topk: int | None
    ties: str
    empty: str
    eval_batch_size: int
    seed: int
    transfer: dict[str, Any]
    defense: DefenseConfig
    suite: list[str]  # eval.suite: the attacks of the robust evaluation (``stages.suite``); [] for none

    @property
    def pqn(self) -> bool:
        return self.quantizer.kind == "pqn"

    @property
    def subvectors(self) -> int | None:
        """M when the retrieval feature is normalised per sub-vector (PQN), else None (whole-vector l2)."""
        return self.quantizer.M if self.pqn else None


def _check_devices(devices: Any) -> None:
    """``trainer.devices``: ``auto``, a number of processes >= 1, or a non-empty list of GPU indices."""
    if isinstance(devices, (list, tuple, ListConfig)):
        ok = len(devices) > 0 and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in devices)
    else:
        ok = devices == "auto" or (isinstance(devices, int) and not isinstance(devices, bool) and devices >= 1)
    if not ok:
        shown = list(devices) if isinstance(devices, ListConfig) else devices
        raise ConfigError(f"trainer.devices={shown!r}: expected auto, a number of training processes >= 1, or a "
                          f"non-empty list of GPU indices")


def _typed(node: DictConfig, schema: type) -> Any:
    """The node as its schema's dataclass (which checks it), whatever the node's own type."""
    fields = {k: v for k, v in container(node).items() if k in schema.__dataclass_fields__}
    return schema(**fields)


def raise_wrapped(exc: BaseException, kind: type[PQAttackError]) -> None:
    """Raise the first error of ``kind`` in ``exc``'s chain of causes (one a library wrapped), if there is one."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, kind):
            raise cause from None
        cause = cause.__cause__ or cause.__context__


def load_job(cfg: DictConfig) -> JobConfig:
    """Check ``cfg`` and return it typed. Every start-up check is here or in the schemas it builds
    (``AttackConfig``, ``KMeansConfig``/``PQNConfig``, ``IndexConfig``), and ``runtime.resolve_device``. An
    error OmegaConf raises while resolving a value (a resolver's ``ConfigError``, a value of the wrong type for its
    schema) comes out as one ``ConfigError`` too."""
    try:
        return _load_job(cfg)
    except OmegaConfBaseException as exc:
        raise_wrapped(exc, ConfigError)
        key = getattr(exc, "full_key", None)
        message = str(exc).splitlines()[0]
        raise ConfigError(f"{key}: {message}" if key else message) from None


def _load_job(cfg: DictConfig) -> JobConfig:
    from .metrics import EMPTY, TIES

    _check_values(cfg, "", JOB_VALUES)  # before anything reads them: `quantizer.K` and `.seed` interpolate two
    if not isinstance(cfg.get("progress"), bool) and cfg.get("progress") != "auto":  # not 1 or 0, which equal bools
        raise ConfigError(f"progress={cfg.get('progress')!r}: expected auto (when stderr is a terminal), true or false")
    if str(cfg.get("log_level", "warning")).lower() not in LOG_LEVELS:
        raise ConfigError(f"log_level={cfg.log_level!r}: expected one of {', '.join(LOG_LEVELS)}")
    _check_recipes(cfg)  # first: the job's `trainer` may interpolate a recipe that is not there
    q = _typed(cfg.quantizer, PQNConfig if cfg.quantizer.kind == "pqn" else KMeansConfig)
    if cfg.quantizer.kind not in ("kmeans", "pqn"):
        raise ConfigError(f"quantizer.kind={cfg.quantizer.kind!r}: expected kmeans or pqn")
    attack, index = _typed(cfg.attack, AttackConfig), _typed(cfg.get("index") or {"kind": "flat"}, IndexConfig)
    d, ev, tr = cfg.dataset, cfg.eval, cfg.trainer
    if cfg.get("bits") is not None and int(cfg.bits) != q.bits:
        raise ConfigError(f"bits={cfg.bits} but quantizer.M * log2(quantizer.K) = {q.M} * "
                          f"{round(math.log2(q.K))} = {q.bits}; give consistent values, or bits=null")
    if d.get("num_database") is not None and q.K > d.num_database:
        raise ConfigError(f"quantizer.K={q.K} is larger than dataset.num_database={d.num_database}: K-means "
                          f"needs at least K database vectors")
    if cfg.model.arch not in ARCHITECTURES:
        raise ConfigError(f"model.arch={cfg.model.arch!r}: expected one of {', '.join(ARCHITECTURES)}")
    _check_model(cfg.model, q.M)
    neck = cfg.model.get("neck")
    if neck is not None and (cfg.model.arch != "fastnet" or neck not in NECKS):
        raise ConfigError(f"model.neck={neck!r}: expected one of {', '.join(NECKS)} or null, and only "
                          f"model.arch=fastnet has a neck (model.arch={cfg.model.arch})")
    if cfg.system not in SYSTEMS:
        raise ConfigError(f"system={cfg.system!r}: expected sdc, adc or both")
    if index.kind == "ivfpq":
        if cfg.system != "adc":
            raise ConfigError(f"system={cfg.system}: index=ivfpq searches with ADC only; set system=adc")
        if ev.topk is None:
            raise ConfigError("eval.topk=null: index=ivfpq ranks only the top k; set eval.topk (e.g. 5000)")
        if d.get("num_database") is not None and index.nlist > d.num_database:
            raise ConfigError(f"index.nlist={index.nlist} is larger than dataset.num_database={d.num_database}")
        if index.train_size is not None and index.nlist > index.train_size:
            raise ConfigError(f"index.nlist={index.nlist} is larger than index.train_size={index.train_size}, the "
                              f"vectors its coarse quantizer is trained on (null: the whole database)")
    if ev.ties not in TIES:
        raise ConfigError(f"eval.ties={ev.ties!r}: expected one of {', '.join(TIES)}")
    if ev.empty not in EMPTY:
        raise ConfigError(f"eval.empty={ev.empty!r}: expected one of {', '.join(EMPTY)}")
    test_size = TEST_SPLIT_SIZE.get(d.name, d.get("num_test"))
    train_size = TRAIN_SPLIT_SIZE.get(d.name)
    if train_size is not None and d.get("num_train") is not None and d.num_train > train_size:
        raise ConfigError(f"dataset.num_train={d.num_train}: dataset={d.name} has {train_size} training images "
                          f"(null: all of them)")
    if d.get("num_database") is None and d.name in ("cifar10", "synthetic"):
        raise ConfigError(f"dataset.num_database=null: dataset={d.name} needs a number")
    if test_size is not None and d.num_queries + d.num_database > test_size:
        raise ConfigError(f"dataset.num_queries + dataset.num_database = {d.num_queries} + {d.num_database} "
                          f"exceeds the {test_size} test images of dataset={d.name}")
    classes = TEST_CLASSES.get(d.name, d.get("num_classes"))
    if d.name == "synthetic" and classes is not None and classes > len(SHAPES):
        raise ConfigError(f"dataset.num_classes={classes}: the synthetic set draws {len(SHAPES)} shapes, one per "
                          f"class (2 to {len(SHAPES)} classes)")
    if attack.target_class is not None and classes is not None and attack.target_class >= classes:
        raise ConfigError(f"attack.target_class={attack.target_class}: dataset={d.name} has {classes} classes "
                          f"(0..{classes - 1})")
    _check_trainer(tr, "trainer", d.get("image_size", 32))
    _check_devices(tr.get("devices", 1))
    if int(tr.get("num_nodes", 1)) != 1:
        raise ConfigError(f"trainer.num_nodes={tr.num_nodes}: a job trains on one node only (its other stages run "
                          f"in one process); use trainer.devices for the GPUs of that node, or a SLURM array of jobs")
    if tr.get("strategy") in ("ddp", "ddp_find_unused_parameters_true") and tr.get("devices", 1) not in (1, [0]):
        raise ConfigError(f"trainer.strategy={tr.strategy} with trainer.devices={tr.devices}: Lightning would start the "
                          f"other ranks by re-running this command line, i.e. the whole job; use trainer=ddp "
                          f"(a spawn-based strategy)")
    if cfg.precision not in PRECISIONS:
        raise ConfigError(f"precision={cfg.precision!r}: expected one of {', '.join(PRECISIONS)}")
    t = container(cfg.get("transfer") or OmegaConf.create({}))
    if t.get("source") and (t.get("source_model") or t.get("source_bits")):
        raise ConfigError("transfer.source (a saved set) and transfer.source_model / transfer.source_bits (make "
                          "the set now) exclude each other; give one")
    from .transfer import source_models

    models = source_models(t)
    if models is not None and not models:
        raise ConfigError("transfer.source_model=[]: give a model, a list of models (an ensemble), or null")
    for name in models or []:
        if not (CONF_DIR / "model" / f"{name}.yaml").is_file():
            raise ConfigError(f"transfer.source_model={t['source_model']!r}: {name!r} is not a model; expected "
                              f"{_options('model')}")
    if models and len(set(models)) != len(models):
        raise ConfigError(f"transfer.source_model={t['source_model']!r}: a model is listed twice")
    if t.get("source_bits") is not None:
        source_k = 2 ** (int(t["source_bits"]) // q.M) if int(t["source_bits"]) // q.M < 64 else math.inf
        if int(t["source_bits"]) % q.M or not 2 <= source_k <= 65536:
            raise ConfigError(f"transfer.source_bits={t['source_bits']}: must be a multiple of quantizer.M={q.M} "
                              f"with 2^(bits / M) in [2, 65536] codewords per sub-space")
        if d.get("num_database") is not None and source_k > d.num_database:
            raise ConfigError(f"transfer.source_bits={t['source_bits']}: {source_k} codewords per sub-space, more "
                              f"than dataset.num_database={d.num_database}")
    if attack.name == "none" and not list(ev.get("suite") or []) and (models or t.get("source")
                                                                       or t.get("source_bits") is not None):
        raise ConfigError("transfer.* with attack=none: a transfer job attacks its queries on another model or code "
                          "length; choose an attack (or leave transfer.* unset)")
    defense = defense_config(container(cfg.defense) if cfg.get("defense") is not None else None)
    available = d.get("num_train") or train_size
    if getattr(defense, "num_train", None) is not None and available is not None and defense.num_train > available:
        raise ConfigError(f"defense.num_train={defense.num_train}: more than the {available} training images "
                          f"(dataset.num_train, or all of dataset={d.name}'s); null: all of them")
    _check_defense(defense, attack, q)
    if isinstance(ev.get("suite"), str):
        raise ConfigError(f"eval.suite={ev.suite!r}: expected a list of attacks, e.g. "
                          f"eval.suite='[apd,\"apd iters=100\"]'")
    suite = list(ev.get("suite") or [])
    if suite:
        from .stages.suite import check_suite

        if attack.name != "none" or models or t.get("source") or t.get("source_bits") is not None:
            raise ConfigError("eval.suite is a white-box evaluation of its own attacks: set attack=none and no "
                              "transfer.*")
        check_suite(suite)
    resolve_device(cfg.device)
    job = JobConfig(config=cfg, model=container(cfg.model), trainer=container(tr), quantizer=q, index=index,
                    attack=attack, systems=SYSTEMS[cfg.system], topk=ev.topk, ties=ev.ties, empty=ev.empty,
                    eval_batch_size=int(ev.batch_size), seed=int(cfg.seed), transfer=t, defense=defense, suite=suite)
    if suite:
        from .stages.suite import members

        if not members(job):  # each member's own job is checked on the way
            raise ConfigError(f"eval.suite={suite}: no member applies to defense={defense.label()} (oblivious, eot "
                              f"and reference=bare members attack a query transform, and a member's defense=<kind> "
                              f"limits it to that kind; docs/defenses.md)")
    return job


def _check_defense(defense: DefenseConfig, attack: AttackConfig, q: KMeansConfig) -> None:
    """The attack options that only a query transform gives a meaning to; the training attack of a K-means target."""
    if (isinstance(defense, AdversarialTrainingConfig) and q.kind != "pqn"
            and defense.attack in SOFT_TRAINING_ATTACKS):
        raise ConfigError(f"defense.attack={defense.attack}: a K-means target's codebooks are built after its "
                          f"backbone is trained, so its training images are made with the feature distance "
                          f"(defense.attack=basic or null); the soft-assignment attacks need quantizer=pqn")
    if isinstance(defense, AdversarialTrainingConfig) and q.kind != "pqn" and defense.code_target:
        raise ConfigError("defense.code_target=true: the consistency with the clean image's codes needs PQN's "
                          "codebooks while training (quantizer=pqn); a K-means target's consistency is the "
                          "squared feature distance")
    conflict = None if attack.name == "none" else defense.attack_conflict(
        oblivious=attack.oblivious, eot=attack.eot, dither=attack.dither, reference=attack.reference)
    if conflict:
        raise ConfigError(conflict)
    if attack.name != "none" and attack.save_prefixes and defense.random and not attack.oblivious:
        raise ConfigError(f"attack.save_prefixes: the shorter runs are prefixes of this one only without per-step "
                          f"randomness, and the attack draws defense={defense.label()}'s random transform at each "
                          f"step (from a seed of this set's own); leave attack.save_prefixes out, or use "
                          f"attack.oblivious=true or a fixed transform")


class ValidateSweep(Callback):
    """Hydra callback: before a sweep starts (and makes its folder), compose and check every job it will run, so a
    bad value stops it with one error and nothing written (exit 2)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        import itertools
        import sys

        from hydra.core.override_parser.overrides_parser import OverridesParser

        parser = OverridesParser.create()
        task = parser.parse_overrides(list(config.hydra.overrides.task))
        given = {o.get_key_element() for o in task}  # as in Hydra's sweeper: the command line wins over the params
        params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items() if k not in given]
        parsed = parser.parse_overrides(params) + task
        choices = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override()
                   else [o.input_line] for o in parsed]
        for overrides in itertools.product(*choices):
            try:
                check_inputs(load_job(compose_config(list(overrides))))
            except Exception as exc:  # noqa: BLE001 -- Hydra turns a callback's exception into a warning and sweeps on
                from .overrides import compose_errors, explain

                kind = exc.kind if isinstance(exc, PQAttackError) else "config"
                text = (explain(exc, list(overrides), compose_config) if isinstance(exc, compose_errors())
                        else str(exc).splitlines()[0])
                print(f"{kind} error: {text} (sweep job: {' '.join(overrides)})", file=sys.stderr)
                sys.exit(exc.exit_code if isinstance(exc, PQAttackError) else ConfigError.exit_code)


def dataset_source(node: DictConfig) -> Any:
    """The dataset's source (``_target_`` instantiated); a ``PQAttackError`` its constructor raises (a value it does
    not take, e.g. ``dataset.database=bogus``) comes out as itself, not wrapped in Hydra's ``InstantiationException``
    (which the command would report as a traceback, exit 1)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node)
    except InstantiationException as exc:
        raise_wrapped(exc, PQAttackError)
        raise


def check_added_keys(cfg: DictConfig) -> None:
    """A key added to a node with a schema (``+attack.kapa=1``, ``++quantizer.alpah=3``): the job reads the node
    through its dataclass, which would drop the key without a word."""
    import dataclasses

    from .overrides import did_you_mean

    for name in ("attack", "quantizer", "index", "defense"):
        node = cfg.get(name)
        schema = OmegaConf.get_type(node) if isinstance(node, DictConfig) else None
        if schema is None or not dataclasses.is_dataclass(schema):
            continue
        fields = [f.name for f in dataclasses.fields(schema)]
        for key in node.keys():
            if key not in fields:
                raise ConfigError(f"{name}.{key}: not a setting of {name} ({schema.__name__} would ignore it)"
                                  f"{did_you_mean(str(key), fields, name)}")


def check_inputs(job: JobConfig) -> None:
    """What a job about to run reads besides its config: no key its schemas would ignore (``check_added_keys``),
    its dataset's files (``DataSource.check_present``: a look at the folders) and a saved query set
    (``transfer.source``) must be there. Not part of ``load_job``, which also reloads the configs of finished jobs
    (which may hold keys since removed, and whose inputs may be gone)."""
    check_added_keys(job.config)
    cache = job.config.cache
    if cache.enabled:
        folder = Path(cache.dir).absolute()
        existing = next(p for p in (folder, *folder.parents) if p.exists())
        if not existing.is_dir():
            raise ConfigError(f"cache.dir={cache.dir}: {existing} is a file, not a folder (the artifact cache is a "
                              f"folder; $PQATTACK_CACHE sets it)")
    dataset_source(job.config.dataset).check_present()  # DatasetError, naming dataset.root
    if job.transfer.get("source"):
        from .cache import ArtifactCache
        from .transfer import find_entry

        find_entry(str(job.transfer["source"]), ArtifactCache(job.config.cache.dir))  # QuerySetError, naming it


def validate(cfg: DictConfig) -> None:
    """Raise ``ConfigError`` for the first bad value of ``cfg`` (see ``load_job``)."""
    load_job(cfg)
