"""The defense's settings (``conf/defense``), typed and checked in one place: one schema per kind."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Optional

from ..errors import ConfigError

KINDS = ("none", "adv", "jpeg", "bitdepth")
#: attack losses adversarial training makes its images with (null: APD for PQN, the feature distance for K-means)
#: the training attacks that read PQN's soft assignment while training (a K-means target has no codebooks then)
SOFT_TRAINING_ATTACKS = ("apd", "aod", "far", "center")
TRAINING_ATTACKS = (*SOFT_TRAINING_ATTACKS, "basic")


@dataclass
class DefenseConfig:
    """``defense=none``: the model as trained, queries as given."""

    kind: str = "none"

    @property
    def adversarial(self) -> bool:
        """Whether the defense is adversarial training (a defended checkpoint)."""
        return self.kind == "adv"

    @property
    def transform(self) -> bool:
        """Whether the defense transforms the queries before the backbone."""
        return self.kind in ("jpeg", "bitdepth")

    @property
    def random(self) -> bool:
        """Whether the query transform draws anew at each call (an EOT attack averages over draws)."""
        return False

    def label(self) -> str:
        """How rows and tables name the defense: ``none``, ``adv (eps=8/255, beta=1, k=2)``, ``jpeg (q=75)``."""
        return self.kind

    def attack_conflict(self, *, oblivious: bool = False, eot: int = 0, dither: float = 0.0,
                        reference: str = "attacked") -> str | None:
        """Why an attack with ``attack.oblivious`` / ``attack.eot`` / ``attack.reference`` has no meaning against this
        defense (None: it has): oblivious ignores a query transform, EOT averages over the draws of a random one that
        the attack sees (or, with ``attack.dither``, over the draws of the dither, whatever the defense), and a bare
        reference differs from the attacked one only behind a query transform that the attack sees."""
        if oblivious and not self.transform:
            return (f"attack.oblivious=true: the attack ignores a query transform, and defense={self.kind} has none "
                    f"(use defense=jpeg or defense=bitdepth)")
        if reference == "bare" and (oblivious or not self.transform):
            why = "attack.oblivious=true already attacks the bare backbone" if oblivious else \
                f"defense={self.kind} has no query transform, so the bare backbone is the attacked one"
            return f"attack.reference=bare: the clean reference through the bare backbone, and {why}"
        if eot and not dither and not (self.random and not oblivious):
            return (f"attack.eot={eot}: expectation over transformation averages over the draws of a random query "
                    f"transform that the attack sees (defense=jpeg with defense.quality_min, attack.oblivious=false) "
                    f"or of the dither (attack.dither > 0); defense={self.label()} has none")
        return None

    def row_fields(self) -> dict[str, Any]:
        """The defense's settings as row fields: ``defense`` the label, then ``defense_<setting>`` for every setting
        of its schema."""
        return {"defense": self.label(), **{f"defense_{f.name}": getattr(self, f.name) for f in fields(self)
                                           if f.name != "kind"}}


@dataclass
class AdversarialTrainingConfig(DefenseConfig):
    """``defense=adv``: the undefended checkpoint (PQN's, or the cross-entropy backbone of a K-means target)
    fine-tuned for ``epochs`` at peak learning rate ``lr`` on batches whose first share ``ratio`` is replaced by
    ``iters``-step L-inf PGD images (radius ``eps``, step ``step``, null: 2.5 eps / iters) made on the fly against
    the current network with ``attack``. Loss: the target's own on the mixed batch plus ``beta`` times the
    consistency of the adversarial images with their clean versions (``trades``: the target's loss on the clean
    batch, and the consistency's gradient through the clean side too, TRADES's objective; ``code_target``: for PQN,
    the consistency is the adversarial image's cross-entropy with its clean image's codes, APD's loss, in place of
    the KL of the soft assignments). ``num_train``: a seeded subset of the
    training images (null: all)."""

    kind: str = "adv"
    attack: Optional[str] = None  # noqa: UP007 (OmegaConf reads the annotation)
    eps: float = 8 / 255
    step: Optional[float] = None  # noqa: UP007
    iters: int = 2
    random_start: bool = True
    ratio: float = 1.0
    beta: float = 1.0
    trades: bool = False
    code_target: bool = False
    epochs: int = 1
    lr: float = 0.01
    num_train: Optional[int] = None  # noqa: UP007

    def __post_init__(self) -> None:
        if self.attack is not None and self.attack not in TRAINING_ATTACKS:
            raise ConfigError(f"defense.attack={self.attack!r}: expected one of {', '.join(TRAINING_ATTACKS)}, or "
                              f"null (APD for PQN, the feature distance for K-means)")
        if not 0 < self.eps <= 1:
            raise ConfigError(f"defense.eps={self.eps}: must be in (0, 1] (pixel scale, e.g. 8/255)")
        if self.step is not None and self.step <= 0:
            raise ConfigError(f"defense.step={self.step}: must be > 0, or null (2.5 * eps / iters)")
        if self.iters < 1:
            raise ConfigError(f"defense.iters={self.iters}: must be >= 1")
        if not 0 < self.ratio <= 1:
            raise ConfigError(f"defense.ratio={self.ratio}: must be in (0, 1] (the share of each batch made "
                              f"adversarial)")
        if self.beta < 0:
            raise ConfigError(f"defense.beta={self.beta}: must be >= 0")
        if self.epochs < 1:
            raise ConfigError(f"defense.epochs={self.epochs}: must be >= 1")
        if self.lr <= 0:
            raise ConfigError(f"defense.lr={self.lr}: must be > 0")
        if self.num_train is not None and self.num_train < 2:
            raise ConfigError(f"defense.num_train={self.num_train}: must be >= 2, or null (all training images)")

    def training_attack(self, pqn: bool) -> str:
        """The attack loss the training images are made with."""
        return self.attack or ("apd" if pqn else "basic")

    def pgd_step(self) -> float:
        return self.step if self.step is not None else 2.5 * self.eps / self.iters

    def label(self) -> str:
        """``adv (eps=8/255, beta=1, k=2)``, then each other setting that differs from its default (``epochs=3``,
        ``ratio=0.5``, ...): two differently trained models never share a label."""
        parts = [f"eps={self.eps * 255:.3g}/255", f"beta={self.beta:g}", f"k={self.iters}"]
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name not in ("kind", "eps", "beta", "iters") and value != f.default:
                parts.append(f"{f.name}={value:g}" if isinstance(value, float) else f"{f.name}={value}")
        return f"adv ({', '.join(parts)})"


@dataclass
class JpegConfig(DefenseConfig):
    """``defense=jpeg``: each query is JPEG-compressed at ``quality`` before the backbone; with ``quality_min``,
    at a quality drawn uniformly from [quality_min, quality] per query and call (a random transform)."""

    kind: str = "jpeg"
    quality: int = 75
    quality_min: Optional[int] = None  # noqa: UP007

    def __post_init__(self) -> None:
        if not 1 <= self.quality <= 100:
            raise ConfigError(f"defense.quality={self.quality}: must be in [1, 100]")
        if self.quality_min is not None and not 1 <= self.quality_min < self.quality:
            raise ConfigError(f"defense.quality_min={self.quality_min}: must be in [1, defense.quality="
                              f"{self.quality}), or null (a fixed quality)")

    @property
    def random(self) -> bool:
        return self.quality_min is not None

    def label(self) -> str:
        return f"jpeg (q={self.quality_min}-{self.quality})" if self.random else f"jpeg (q={self.quality})"


@dataclass
class BitDepthConfig(DefenseConfig):
    """``defense=bitdepth``: each query's colour depth is reduced to ``depth`` bits per channel before the backbone
    (feature squeezing, Xu et al. 2018)."""

    kind: str = "bitdepth"
    depth: int = 4

    def __post_init__(self) -> None:
        if not 1 <= self.depth <= 7:
            raise ConfigError(f"defense.depth={self.depth}: must be in [1, 7] (bits per channel; 8 is the input)")

    def label(self) -> str:
        return f"bitdepth ({self.depth} bits)"


SCHEMAS: dict[str, type[DefenseConfig]] = {"none": DefenseConfig, "adv": AdversarialTrainingConfig,
                                           "jpeg": JpegConfig, "bitdepth": BitDepthConfig}


def setting_defaults() -> dict[str, Any]:
    """Each defense setting with its schema default (``kind``: ``none``), for records made before the setting
    existed, which computed with that default. A setting whose default differs between kinds is left out."""
    defaults: dict[str, Any] = {"kind": DefenseConfig.kind}
    ambiguous: set[str] = set()
    for schema in SCHEMAS.values():
        for f in fields(schema):
            if f.name == "kind":
                continue
            if f.name in defaults and defaults[f.name] != f.default:
                ambiguous.add(f.name)
            defaults.setdefault(f.name, f.default)
    return {k: v for k, v in defaults.items() if k not in ambiguous}


def defense_config(node: dict[str, Any] | None) -> DefenseConfig:
    """The typed defense of a ``defense`` config node (None or absent: ``none``); checks it."""
    node = dict(node or {"kind": "none"})
    kind = node.get("kind", "none")
    if kind not in SCHEMAS:
        raise ConfigError(f"defense.kind={kind!r}: expected one of {', '.join(KINDS)}")
    schema = SCHEMAS[kind]
    unknown = sorted(set(node) - set(schema.__dataclass_fields__))
    if unknown:
        raise ConfigError(f"defense.{unknown[0]}: not a setting of defense={kind}; its settings are "
                          f"{', '.join(f for f in schema.__dataclass_fields__ if f != 'kind') or 'none'}")
    return schema(**node)
