"""Stage 5: robust evaluation (``eval.suite``): one target against a suite of attacks, a row per attack, and per
query the worst case over them (the lowest AP any member reaches on that query), a row of its own per system."""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from omegaconf import OmegaConf

from ..config import CONF_DIR, JobConfig, compose_config, container, load_job
from ..defense.config import KINDS, DefenseConfig
from ..errors import ConfigError
from ..labels import WORST, attack_label

if TYPE_CHECKING:  # the suite's config checks (load_job) import this module without the pipeline's stages
    from ..data import RetrievalData
    from ..metrics import QueryAP
    from ..runtime import Runtime
    from .target import Target


def parse_member(member: str) -> tuple[str, list[str]]:
    """``"apd iters=100 step_schedule=cosine"`` -> ``("apd", ["attack.iters=100", "attack.step_schedule=cosine"])``
    (a ``defense=`` setting is the member's defense filter, ``member_defenses``, not an attack setting)."""
    if not str(member).split():
        raise ConfigError(f"eval.suite member {member!r}: empty; give an attack option, then its settings (e.g. "
                          f"'apd iters=100')")
    name, *settings = str(member).split()
    bad = [s for s in settings if "=" not in s]
    if bad:
        raise ConfigError(f"eval.suite member {member!r}: {bad[0]!r} is not key=value (an attack option, then its "
                          f"settings, e.g. 'apd iters=100')")
    keys = [s.partition("=")[0] for s in settings]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ConfigError(f"eval.suite member {member!r}: {twice[0]} is set twice")
    return name, [f"attack.{s}" for s in settings if s.partition("=")[0] != "defense"]


@functools.lru_cache(maxsize=64)
def member_defenses(member: str) -> frozenset[str] | None:
    """The defense kinds a member is limited to (``"apd eot=16 defense=bitdepth"``: bit depth only; several kinds
    comma-separated), None for a member without ``defense=``: it then goes with every defense it applies to."""
    parse_member(member)
    given = [s.partition("=")[2] for s in str(member).split()[1:] if s.partition("=")[0] == "defense"]
    if not given:
        return None
    kinds = [k.strip() for k in given[0].split(",")]
    wrong = [k for k in kinds if k not in KINDS]
    if wrong:
        raise ConfigError(f"eval.suite member {member!r}: defense={given[0]!r} names the defense kinds the member "
                          f"is limited to; expected one or more of {', '.join(KINDS)}, comma-separated "
                          f"(defense=jpeg covers defense=jpeg_random)")
    return frozenset(kinds)


@functools.lru_cache(maxsize=64)
def member_attack(member: str) -> dict[str, Any]:
    """The attack node of a suite member, composed from ``conf/attack/<option>`` and its settings."""
    name, overrides = parse_member(member)
    options = sorted(p.stem for p in (CONF_DIR / "attack").glob("*.yaml") if not p.stem.startswith("_"))
    if name not in options or name == "none":
        raise ConfigError(f"eval.suite member {member!r}: {name!r} is not an attack; expected one of "
                          f"{', '.join(o for o in options if o != 'none')}")
    try:
        return container(compose_config([f"attack={name}", *overrides]).attack)
    except ConfigError:
        raise
    except Exception as exc:  # an unknown key or a value of the wrong type, as Hydra words it
        raise ConfigError(f"eval.suite member {member!r}: {str(exc).splitlines()[0]}") from None


def applies(attack: dict[str, Any], defense: DefenseConfig) -> bool:
    """Whether a suite member applies to the defense (``DefenseConfig.attack_conflict``): ``oblivious`` members to a
    query transform only, ``eot`` members to a random transform they see only, ``reference=bare`` members to a
    transform they see. A suite can so serve every defense of a sweep."""
    return defense.attack_conflict(oblivious=bool(attack.get("oblivious")), eot=int(attack.get("eot") or 0),
                                   dither=float(attack.get("dither") or 0.0),
                                   reference=str(attack.get("reference") or "attacked")) is None


def member_applies(member: str, defense: DefenseConfig) -> bool:
    """``applies``, and the defense's kind among the member's own ``defense=`` kinds where it names them."""
    kinds = member_defenses(member)
    return (kinds is None or defense.kind in kinds) and applies(member_attack(member), defense)


def check_suite(suite: list[str]) -> None:
    """Every member composes, its settings pass the attack's checks, and no member is listed twice."""
    from ..attacks import AttackConfig

    if len(set(map(str, suite))) != len(suite):
        raise ConfigError(f"eval.suite={list(suite)}: a member is listed twice")
    seen: dict[str, list[str]] = {}
    for member in map(str, suite):
        node = member_attack(member)
        kinds = member_defenses(member)
        try:
            AttackConfig(**{k: v for k, v in node.items() if k in AttackConfig.__dataclass_fields__})
        except ConfigError as exc:
            raise ConfigError(f"eval.suite member {member!r}: {exc}") from None
        same = seen.setdefault(json.dumps(node, sort_keys=True), [])
        for other in same:  # the same attack twice for a defense both go with
            theirs = member_defenses(other)
            if kinds is None or theirs is None or kinds & theirs:
                raise ConfigError(f"eval.suite members {other!r} and {member!r} are the same attack")
        same.append(member)


def members(job: JobConfig) -> list[tuple[str, JobConfig]]:
    """Each suite member that applies to the job's defense (``member_applies``), as written in ``eval.suite``, with
    its job: this job with the member's attack, and no suite."""
    out = []
    for member in map(str, job.suite):
        if not member_applies(member, job.defense):
            continue
        cfg = OmegaConf.create(OmegaConf.to_container(job.config, resolve=False))
        cfg.attack = member_attack(member)
        cfg.eval.suite = []
        try:
            out.append((member, load_job(cfg)))
        except ConfigError as exc:
            raise ConfigError(f"eval.suite member {member!r}: {exc}") from None
    return out


def member_jobs(job: JobConfig) -> list[JobConfig]:
    """One job per suite member that applies to the job's defense (``members``)."""
    return [mjob for _, mjob in members(job)]


def worst_case(scores: list[QueryAP]) -> QueryAP:
    """Per query, the lowest AP over the members (under each tie convention), with the largest found-weight over
    them: under ``eval.empty=drop`` (mAP = sum of APs / sum of found-weights) the member whose AP is lowest may be
    one that leaves the query out, and with its weight the worst case could exceed a member's mAP; with the largest
    it is at most every member's, under either convention."""
    from ..metrics import QueryAP

    out = {}
    for ap, found in (("expected", "expected_found"), ("grouped", "grouped_found")):
        out[ap] = np.stack([getattr(s, ap) for s in scores]).min(0)
        out[found] = np.stack([getattr(s, found) for s in scores]).max(0)
    return QueryAP(**out)


def evaluate_suite(job: JobConfig, data: RetrievalData, target: Target, base: dict[str, Any],
                   describe: Callable[[JobConfig], dict[str, Any]], rt: Runtime,
                   rows_of: Callable[..., list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The rows of every member's adversarial set (``rows_of``: ``records.attacked_rows``), then per system the
    worst case over them. Each member's set is cached under the key its own job has, so a sweep that also runs
    the members alone makes each set once."""
    from ..records import score_fields
    from .attack import adversarial_set
    from .target import score_set

    rows: list[dict[str, Any]] = []
    per_system: dict[str, list[QueryAP]] = {s: [] for s in job.systems}
    labels = []
    for mjob in member_jobs(job):
        adv = adversarial_set(mjob, data, target, describe, rt)
        assert adv is not None
        with rt.timed(f"eval_{mjob.attack.name}"):
            scored = score_set(target, adv.images, adv.key, data, job, rt)
        member_rows = rows_of(base, scored.scores, mjob, adv, data, scored.changed, scored.logits)
        rows += member_rows
        labels.append(attack_label(member_rows[0]))
        for s in job.systems:
            per_system[s].append(scored.scores[s]["aps"])
    for s in job.systems:
        worst = {"aps": worst_case(per_system[s])}
        rows.append({**base, "attack": WORST, "system": s, **score_fields(worst, job), "topk": job.topk,
                     "source_model": base["model"], "source_bits": base["bits"], "transfer": False, "suite": labels})
    return rows


__all__ = ["applies", "check_suite", "evaluate_suite", "member_attack", "member_jobs", "members", "parse_member", "worst_case"]
