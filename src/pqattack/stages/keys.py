"""Every cached artifact's key is the hash of its spec: everything that determines its content. The specs are
built here from the typed job and the data's actual items (``RetrievalData.train_key`` etc.), without building
anything, so ``artifact_keys`` lists a job's keys and tests/test_cache_keys.py can check that every config key
is in them. Config keys that change no artifact's content are in ``RUN_ONLY_KEYS``."""

from __future__ import annotations

import inspect
from typing import Any

import torch

from ..attacks import CLASS_LOSSES, LOSS_IGNORES, OFF_VALUES
from ..cache import spec_key
from ..config import JobConfig, container
from ..data import RetrievalData
from ..defense.config import AdversarialTrainingConfig
from ..models import DEFAULT_BACKBONE_BUILDER, ClassifierModule
from ..models.recipe import RECIPE_OPTIONS
from ..training import DISTRIBUTED_KEYS, distributed_spec

# Config keys that change no artifact's content, so no cache key holds them (tests/test_cache_keys.py walks every
# config key and fails on one that is neither here nor in an artifact's key):
RUN_ONLY_KEYS = (
    "progress", "logger", "resume", "cache", "log_level",  # what is shown and logged, resuming, the cache's place
    "device",              # where it runs: a checkpoint is the same recipe on any device (and travels between them)
    "eval.batch_size",     # memory only: images are embedded one by one, whatever the batch
    "dataset.download",    # whether a missing dataset may be downloaded; the data keys hold what was loaded
    "dataset.skip_missing",  # whether missing files stop the run; the data keys hold the items that were loaded
    "dataset.resize",      # whether an image of another size is resized or refused; the data keys hold the size
    "dataset.name",        # the option's label; the loader (`_target_`) names the data in its keys
    "trainer.strategy",    # how training processes start; their number (world size) is in the checkpoint key
    "trainer.num_nodes",   # must be 1 (config.load_job); the world size is in the checkpoint key
    "attack.save_prefixes",  # also caches the sets of shorter runs, each under its own key; this set is the same
)
TRAINER_CORE = ("max_epochs", "batch_size", "lr", "momentum", "weight_decay", "nesterov", "label_smoothing",
                "schedule", "augment")
ATTACK_CORE = ("name", "loss", "eps", "step", "iters", "random_start", "quantize_8bit", "similarity", "temperature",
               "peak", "batch_size")
#: options whose null and 0 differ: ``attack.target_class`` null is a seeded random other class per query, 0 class 0
ZERO_IS_A_VALUE = ("target_class",)
#: the recipe options that reach the training module only when the trainer config has them (``optimiser_kwargs``),
#: with the module's value when it has not: crop_padding 4, warmup 0.25, lr_start 0.2, ...
RECIPE_DEFAULTS = {k: p.default for k, p in inspect.signature(ClassifierModule.__init__).parameters.items()
                   if k in RECIPE_OPTIONS and p.default is not inspect.Parameter.empty}


def is_off(value: Any, key: str = "") -> bool:
    """An option's "off" value: null, false, 0, "none", "off" or empty (0 is a value for ``ZERO_IS_A_VALUE``)."""
    if key in ZERO_IS_A_VALUE:
        return value is None
    return value is None or value is False or (not isinstance(value, bool) and isinstance(value, (int, float))
                                               and value == 0) or value in ("none", "off", "") or value == []


def settings(node: dict[str, Any], core: tuple[str, ...] = ()) -> dict[str, Any]:
    """A config node as it enters a spec: without ``_target_``, and with every option outside ``core`` left out
    while it is off, so that adding an option (off by default) to a config leaves existing keys unchanged."""
    return {k: v for k, v in node.items() if k != "_target_" and (k in core or not is_off(v, k))}


def recipe_spec(trainer: dict[str, Any], exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """The training recipe (``trainer``), without where and how verbosely it runs. An option at its off value is
    left out only when leaving it out trains the same: ``trainer.crop_padding=0`` is kept, since without the key the
    module pads by 4 (``RECIPE_DEFAULTS``)."""
    recipe = {k: v for k, v in trainer.items() if k not in ("progress", *DISTRIBUTED_KEYS, *exclude)}
    kept = tuple(k for k, v in recipe.items() if is_off(v) and k in RECIPE_DEFAULTS and RECIPE_DEFAULTS[k] != v)
    return settings(recipe, TRAINER_CORE + kept)


def model_spec(model: dict[str, Any]) -> dict[str, Any]:
    """The backbone's settings; its builder (``_target_``) only when it is not ``models.build_backbone``, which every
    ``conf/model`` option names, so that checkpoints made before the model configs named a builder keep their keys."""
    builder = model.get("_target_", DEFAULT_BACKBONE_BUILDER)
    return {**settings(model), **({"builder": builder} if builder != DEFAULT_BACKBONE_BUILDER else {})}


#: the SDC table of ``attacks.losses.sdc_table`` (the far-code attack's weights; the nearest centre code of a
#: training batch) ran in bf16 under bf16 autocast, with a codeword's distance to itself about 1e-3 instead of 0.
#: What it made under bf16 (far-code query sets; checkpoints adversarially trained on far or centre-code images)
#: and the results of a job that made any of them (a suite member's set included) are keyed apart, so that a
#: cache made before is not reused, nor its results by ``resume``. float32 keys are unchanged: there the table was
#: float32 and its diagonal off by about 1e-7, a weight of about e^-16 beside the other codewords' (not measured).
SDC_TABLE = {"sdc_table": "float32"}


def bf16_sdc_table(precision: str, uses_table: bool) -> dict[str, Any]:
    """``SDC_TABLE`` for an artifact made under bf16 with the SDC table, else nothing."""
    return dict(SDC_TABLE) if precision == "bf16" and uses_table else {}


def trains_on_sdc_table(job: JobConfig) -> bool:
    """Whether adversarial training makes its images with the SDC table (the far-code and centre-code attacks)."""
    d = job.defense
    return isinstance(d, AdversarialTrainingConfig) and d.training_attack(job.pqn) in ("far", "center")


def uses_sdc_table(job: JobConfig) -> bool:
    """Whether a job makes anything with the SDC table: a far-code query set (its attack's, or a suite member's),
    or a checkpoint adversarially trained on far or centre-code images."""
    if (job.attack.name != "none" and job.attack.loss == "far") or trains_on_sdc_table(job):
        return True
    if job.suite:
        from .suite import member_jobs

        return any(m.attack.loss == "far" for m in member_jobs(job))
    return False


def checkpoint_spec(job: JobConfig, data: RetrievalData, precision: str, device: torch.device) -> dict[str, Any]:
    """The cross-entropy backbone: the training items, the model, the recipe, the training precision, the seed
    (and the number of training processes when > 1)."""
    return {"data": data.train_key, "model": model_spec(job.model), "trainer": recipe_spec(job.trainer),
            "precision": precision, "seed": job.seed, **distributed_spec(job.trainer, device)}


def pqn_spec(job: JobConfig, base_key: str, precision: str, device: torch.device) -> dict[str, Any]:
    """PQN's joint training from the cross-entropy backbone ``base_key`` (which holds the training items)."""
    return {"base_checkpoint": base_key, "quantizer": settings(container(job.config.quantizer)),
            "batch_size": int(job.trainer["batch_size"]), "trainer": recipe_spec(job.trainer, ("max_epochs", "lr")),
            "precision": precision, "seed": job.seed, **distributed_spec(job.trainer, device)}


def defense_spec(job: JobConfig, undefended_key: str, precision: str, device: torch.device) -> dict[str, Any]:
    """An adversarially trained checkpoint: the undefended one (``undefended_key``, which holds the data and the
    recipe it was trained with), every defense setting, the recipe it is fine-tuned with, the precision, the seed."""
    return {"undefended_checkpoint": undefended_key, "defense": settings(container(job.config.defense), ("kind",)),
            "batch_size": int(job.trainer["batch_size"]), "trainer": recipe_spec(job.trainer, ("max_epochs", "lr")),
            "precision": precision, **bf16_sdc_table(precision, trains_on_sdc_table(job)), "seed": job.seed,
            **distributed_spec(job.trainer, device)}


def features_spec(ckpt_key: str, data: RetrievalData, precision: str, subvectors: int | None) -> dict[str, Any]:
    """Clean query and database features of checkpoint ``ckpt_key``."""
    spec: dict[str, Any] = {"checkpoint": ckpt_key, "query": data.query_key, "database": data.database_key,
                            "precision": precision}
    if subvectors:
        spec["norm"] = f"subvector/{subvectors}"
    return spec


def codebooks_spec(job: JobConfig, feat_key: str) -> dict[str, Any]:
    """K-means codebooks on the database features ``feat_key``."""
    q = job.quantizer
    return {"features": feat_key, "M": q.M, "K": q.K, "niter": q.niter, "seed": q.seed, "kind": q.kind}


#: how a random query transform's draws are seeded, in the keys of what it draws for (an adaptive query set, the
#: results): each attack and each evaluation restarts them from a seed of its own (``stages.defense.fresh_draws``);
#: sets and results made before that drew from one stream per process, and are not reused
RANDOM_DRAWS = "restarted per pass"


def attack_temperature(job: JobConfig) -> float:
    """``attack.temperature``, or the target's own when null: 1 for K-means (eq. 7 as printed), 1 / alpha for
    PQN (its soft layer, softmax(alpha <x_m, c_mk>))."""
    if job.attack.temperature is not None:
        return float(job.attack.temperature)
    return 1.0 / float(job.quantizer.alpha) if job.pqn else 1.0  # type: ignore[attr-defined]


def attack_settings(job: JobConfig) -> dict[str, Any]:
    """The attack's settings as they make a query set: the resolved temperature, without what the loss ignores,
    loop options at their off value (``attacks.OFF_VALUES``), ``save_prefixes`` (it changes no set) and
    ``oblivious`` (an oblivious set is the undefended model's; an adaptive one holds the defense, ``attack_spec``)."""
    a = {**container(job.config.attack), "temperature": attack_temperature(job)}
    return {k: v for k, v in a.items() if k not in LOSS_IGNORES.get(job.attack.loss, ())
            and k not in ("save_prefixes", "oblivious") and not (k in OFF_VALUES and v == OFF_VALUES[k])}


def attack_spec(job: JobConfig, data: RetrievalData, checkpoint_key: str | list[str],
                codebooks_key: str | None | list[str | None], precision: str) -> dict[str, Any]:
    """An adversarial query set: the source (checkpoint, and codebooks unless the loss ignores them; lists for an
    ensemble of sources), the actual queries (and database items, whose codes give the centre codes), every attack
    setting (``batch_size`` included: it orders the random-start draws), precision, seed. ``restart_pick=oracle``
    picks each query's restart by its AP on the source's index: the codebooks, the database and the systems
    averaged over are then in the key too."""
    oracle = job.attack.restart_pick == "oracle"
    if job.attack.loss == "basic" and not oracle:
        codebooks_key = None if isinstance(checkpoint_key, str) else [None] * len(checkpoint_key)
    spec = {"checkpoint": checkpoint_key, "codebooks": codebooks_key, "queries": data.query_key,
            "attack": settings(attack_settings(job), ATTACK_CORE), "precision": precision,
            **bf16_sdc_table(precision, job.attack.loss == "far"), "seed": job.seed}
    if job.attack.loss in CLASS_LOSSES or oracle:
        spec["database"] = data.database_key
    if oracle:
        spec["oracle_systems"] = list(job.systems)
    if job.defense.transform and not job.attack.oblivious:  # made through the query transform (BPDA)
        spec["defense"] = settings(container(job.config.defense), ("kind",))
        if job.defense.random:
            spec["defense"]["draws"] = RANDOM_DRAWS
    return spec


def ensemble_keys(checkpoints: list[str], codebooks: list[str | None]) -> tuple[Any, Any]:
    """The sources' checkpoint and codebooks keys as a query set's spec holds them: plain for one source, lists
    for an ensemble."""
    return (checkpoints[0], codebooks[0]) if len(checkpoints) == 1 else (checkpoints, codebooks)


def _drop(tree: dict[str, Any], dotted: str) -> None:
    head, _, rest = dotted.partition(".")
    if rest:
        if isinstance(tree.get(head), dict):
            _drop(tree[head], rest)
    else:
        tree.pop(head, None)


def _without_off(tree: dict[str, Any]) -> dict[str, Any]:
    return {k: _without_off(v) if isinstance(v, dict) else v for k, v in tree.items() if not is_off(v, k)}


def results_spec(job: JobConfig, precision: str) -> dict[str, Any]:
    """A job's results: its whole config except ``RUN_ONLY_KEYS`` and options that are off, with the precision it
    resolved to."""
    spec = container(job.config)
    for key in RUN_ONLY_KEYS:
        _drop(spec, key)
    if spec["model"].get("_target_") == DEFAULT_BACKBONE_BUILDER:  # as in model_spec
        _drop(spec, "model._target_")
    for key, off in OFF_VALUES.items():  # loop options whose off value is a word
        if spec.get("attack", {}).get(key) == off:
            _drop(spec, f"attack.{key}")
    if spec.get("defense", {}).get("kind") == "none":  # as before the defense group existed
        _drop(spec, "defense")
    if job.defense.random:
        spec["defense"]["draws"] = RANDOM_DRAWS
    if precision == "bf16":  # uses_sdc_table composes a suite's member jobs: only where the key needs it
        spec.update(bf16_sdc_table(precision, uses_sdc_table(job)))
    return {**_without_off(spec), "precision": precision}


def artifact_keys(job: JobConfig, data: RetrievalData, precision: str, device: torch.device) -> dict[str, str]:
    """The cache key of every artifact a job uses, from its config and data alone: nothing is built or loaded.
    (A saved adversarial set given by ``transfer.source`` has its own key, read when it is loaded.)"""
    from ..transfer import source_jobs

    def target_keys(j: JobConfig) -> dict[str, str]:
        out = {"checkpoint": spec_key("checkpoint", checkpoint_spec(j, data, precision, device))}
        if j.pqn:
            out["base_checkpoint"] = out["checkpoint"]
            out["checkpoint"] = spec_key("checkpoint", pqn_spec(j, out["base_checkpoint"], precision, device))
        if j.defense.adversarial:
            out["undefended_checkpoint"] = out["checkpoint"]
            out["checkpoint"] = spec_key("checkpoint", defense_spec(j, out["undefended_checkpoint"], precision, device))
        out["features"] = spec_key("features", features_spec(out["checkpoint"], data, precision, j.subvectors))
        out["codebooks"] = out["checkpoint"] if j.pqn else spec_key("codebooks", codebooks_spec(j, out["features"]))
        return out

    keys = target_keys(job)
    if job.attack.name != "none" and not job.transfer.get("source"):
        srcs = source_jobs(job)
        if srcs is None:
            spec = attack_spec(job, data, keys["checkpoint"], keys["codebooks"], precision)
        else:
            made = [target_keys(s) for s in srcs]
            spec = attack_spec(srcs[0], data, *ensemble_keys([m["checkpoint"] for m in made],
                                                             [m["codebooks"] for m in made]), precision)
        keys["adversarial_queries"] = spec_key("adversarial_queries", spec)
    keys["results"] = spec_key("results", results_spec(job, precision))
    return keys
