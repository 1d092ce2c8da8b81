"""Is one attack really below another on the same target, or is the gap noise? Prints, for the attacks of one or
more jobs on one target (a suite job's members, or each job's own attack; query sets and target from the cache),
each attack's mAP and its paired difference from a reference attack over the same queries: the difference in
points, a 95 % bootstrap interval (queries resampled, each query's pair of APs kept together), and the shares of
queries whose AP the attack lowers and raises against the reference.

    python tools/compare_attacks.py outputs/sweeps/<date>/0 --reference "apd oblivious=true"
    python tools/compare_attacks.py <apd job> <far job> --reference apd

``--reference`` names an attack as the tables label it (``apd (oblivious)``) or as a suite member is written
(``apd oblivious=true``); without it, the first attack. Repeat it to compare every attack with each of several.
An interval that holds 0 says the two attacks' mAPs are not told apart by these queries. The jobs' checkpoints,
codebooks and query sets must be in the cache (the tool stops, naming the job, when one is not: the jobs ran on
another machine or cache; exit code 3); ``--build`` makes them again instead, which trains and attacks as the jobs
did. Bad input (a folder that is no job's, jobs of other targets or datasets, an unknown ``--reference``) stops it
with one line and exit code 2, before anything is scored.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import OmegaConf

from pqattack.cache import JOB_ARTIFACTS, ArtifactCache
from pqattack.config import JobConfig
from pqattack.errors import CacheMiss, UsageError, run_command
from pqattack.data import RetrievalData
from pqattack.metrics import QueryAP, paired_difference
from pqattack.records import describe, job_of, recipe_fields, set_label
from pqattack.runtime import Runtime, resolve_device, resolve_precision
from pqattack.stages.attack import adversarial_set
from pqattack.stages.suite import members
from pqattack.stages.target import Target, build_target, score_set
from pqattack.transfer import AdversarialSet


def attack_sets(job: JobConfig, data: RetrievalData, target: Target, rt: Runtime, label: str
                ) -> list[tuple[str, str | None, JobConfig, AdversarialSet]]:
    """The query sets a job evaluates (a suite job's members, else its own attack), from the cache: per set, the label
    its rows carry, the suite member as written (None outside a suite), its job and the set."""
    base = {**describe(job, data, label), **recipe_fields(job, target, rt)}
    out = []
    for member, mjob in members(job) if job.suite else [(None, job)]:
        adv = adversarial_set(mjob, data, target, lambda j: describe(j, data, label), rt)
        if adv is not None:
            out.append((set_label(base, mjob, adv), member, mjob, adv))
    return out


def reference_label(reference: str | None, labels: list[str], aliases: dict[str, str]) -> str:
    """The label of ``--reference``: a label as the tables print it, or a suite member as the suite writes it."""
    if reference is None:
        return labels[0]
    if reference in labels:
        return reference
    if reference in aliases:
        return aliases[reference]
    raise UsageError(f"--reference {reference!r} is none of these jobs' attacks: {'; '.join(labels)}"
                     + (f" (suite members: {'; '.join(aliases)})" if aliases else ""))


def compare(aps: dict[str, dict[str, QueryAP]], references: list[str], ties: str, empty: str, draws: int,
            seed: int) -> list[dict[str, Any]]:
    """Per system and reference, one record per attack: its mAP and, but for the reference itself, its paired
    difference from the reference."""
    out = []
    for system in next(iter(aps.values())):
        for reference in references:
            ref = aps[reference][system]
            for label, per_system in aps.items():
                rec: dict[str, Any] = {"system": system, "attack": label, "reference": reference,
                                       "map": round(per_system[system].mean(ties, empty), 4)}
                if label != reference:
                    d = paired_difference(per_system[system], ref, ties, empty, draws, seed=seed)
                    rec.update(difference=round(d.difference, 4), low=round(d.low, 4), high=round(d.high, 4),
                               lower=round(d.lower, 4), higher=round(d.higher, 4))
                out.append(rec)
    return out


def markdown(records: list[dict[str, Any]], queries: int) -> str:
    out = []
    for reference in dict.fromkeys(r["reference"] for r in records):
        lines = [f"mAP (%) and the paired difference from {reference} over the same {queries} queries (95 % "
                 f"bootstrap interval); the shares of queries whose AP the attack lowers / raises", "",
                 "| system | attack | mAP | difference | 95 % interval | queries lower / higher |",
                 "|---|---|---|---|---|---|"]
        for r in records:
            if r["reference"] != reference:
                continue
            if "difference" in r:
                lines.append(f"| {r['system'].upper()} | {r['attack']} | {r['map']:.2f} | {r['difference']:+.2f} | "
                             f"[{r['low']:+.2f}, {r['high']:+.2f}] | {100 * r['lower']:.1f} % / "
                             f"{100 * r['higher']:.1f} % |")
            else:
                lines.append(f"| {r['system'].upper()} | {r['attack']} (reference) | {r['map']:.2f} | | | |")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def main(argv: list[str] | None = None) -> None:
    """The command: a ``PQAttackError`` (bad input: exit code 2; a missing cache entry: 3) is one line on stderr."""
    run_command(run, argv)


def run(argv: list[str] | None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("job_dirs", type=Path, nargs="+", help="job output folders (each holds its results.json) of one "
                                                           "target: a suite job, or jobs of one attack each")
    p.add_argument("--reference", action="append", help="the attack the others are compared with (default: the "
                                                         "first); repeat it for several")
    p.add_argument("--draws", type=int, default=2000, help="bootstrap draws (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="the bootstrap's seed (default 0)")
    p.add_argument("--json", action="store_true", help="print the records as JSON instead of a table")
    p.add_argument("--build", action="store_true", help="make what the cache lacks (checkpoints, codebooks, query "
                                                        "sets) instead of stopping: trains and attacks again")
    a = p.parse_args(argv)
    if a.draws < 1:
        raise UsageError(f"--draws {a.draws}: at least 1")
    jobs = [job_of(d) for d in a.job_dirs]
    _, cfg = jobs[0]
    for (_, jcfg), d in zip(jobs, a.job_dirs):
        if OmegaConf.to_container(jcfg.dataset) != OmegaConf.to_container(cfg.dataset):
            raise UsageError(f"{d}: another dataset config than {a.job_dirs[0]}'s; the attacks must score the "
                             f"same queries")
    device = resolve_device(cfg.device)
    cache = ArtifactCache(cfg.cache.dir, load_only=() if a.build else JOB_ARTIFACTS)
    rt = Runtime(device, resolve_precision(cfg.precision, device), cache, progress=False)
    source = instantiate(cfg.dataset)
    data = source.load(rt.cache)
    label = getattr(source, "describe", lambda: data.name)()
    sets: dict[str, tuple[JobConfig, AdversarialSet, Target]] = {}
    aliases: dict[str, str] = {}
    target_id = None
    for (job, _), d in zip(jobs, a.job_dirs):
        try:
            target = build_target(job, data, rt, [])
            this = (target.checkpoint_key, target.codebooks_key, job.defense.label(), tuple(job.systems))
            if target_id is not None and this != target_id:
                raise UsageError(f"{d}: another target (checkpoint, codebooks, defense or systems) than "
                                 f"{a.job_dirs[0]}'s; a paired comparison needs one target")
            target_id = this
            for lbl, member, mjob, adv in attack_sets(job, data, target, rt, label):
                sets.setdefault(lbl, (mjob, adv, target))
                if member is not None:
                    aliases[member] = lbl
        except CacheMiss as exc:
            raise CacheMiss(f"{d}: {exc} (the job ran on another machine or cache; --build makes it again, "
                            f"training and attacking as the job did)") from None
    if rt.cache.builds:
        print(f"note: built {', '.join(rt.cache.builds)} (not in the cache)", file=sys.stderr)
    if len(sets) < 2:
        raise UsageError(f"{len(sets)} attack(s) in these jobs ({'; '.join(sets) or 'none'}); a comparison "
                         f"needs two")
    references = [reference_label(r, list(sets), aliases) for r in a.reference or [None]]  # before any scoring
    aps = {lbl: {s: v["aps"] for s, v in score_set(t, adv.images, adv.key, data, mjob, rt).scores.items()}
           for lbl, (mjob, adv, t) in sets.items()}
    job0 = jobs[0][0]
    empty = job0.empty if job0.topk is not None else "zero"
    records = compare(aps, list(dict.fromkeys(references)), job0.ties, empty, a.draws, a.seed)
    if a.json:
        print(json.dumps(records, indent=1))
    else:
        print(markdown(records, len(data.query)))


if __name__ == "__main__":
    main()
