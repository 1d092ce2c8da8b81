"""How a results row names its attack: the vocabulary that the stages writing rows and the report reading them
share (the report renders rows with these labels; ``stages.suite`` names its members and worst-case rows
with them)."""

from __future__ import annotations

from typing import Any, Sequence

WORST = "worst-case"  # the attack name of a robust evaluation's per-query worst-case rows (``stages.suite``)
PAPER_ATTACK = {"similarity": "dot", "eps": 8 / 255, "step": 0.01, "iters": 5}
#: the PGD loop's options beyond the paper, in the order rows, query sets and table cells carry them
LOOP_OPTIONS = ("temperature_final", "logit_norm", "restarts", "restart_pick", "momentum", "diversity", "step_schedule",
                "eot", "dither", "reference")
#: the loop options beyond the paper as a label shows them (a row holds None where an option is off)
LOOP_LABELS = {"temperature_final": "T->{:g}", "logit_norm": "logit-norm", "restarts": "restarts={}",
               "restart_pick": "pick={}", "momentum": "MI={:g}", "diversity": "DI={:g}", "step_schedule": "{}",
               "dither": "dither={:.3g}", "reference": "ref={}"}
MARGIN_KAPPA = 0.1  # conf/attack/margin.yaml's kappa: a label names another


def default_temperature(row: dict[str, Any]) -> float:
    """The target's own soft-assignment temperature: 1 (eq. 7 as printed) for K-means, 1 / alpha for PQN."""
    return 1.0 / float(row["alpha"]) if row.get("quantizer") == "pqn" and row.get("alpha") else 1.0


def is_paper_attack(row: dict[str, Any]) -> bool:
    """Clean rows, and attacked rows made with the paper's soft assignment (the target's own temperature, the
    index's peak code) and budget."""
    if row.get("temperature") is not None and abs(float(row["temperature"]) - default_temperature(row)) > 1e-9:
        return False
    if row.get("peak") not in (None, "index"):
        return False
    if any(row.get(k) is not None for k in LOOP_LABELS) or row.get("defense") is not None or row.get("eot"):
        return False
    return all(row.get(k) is None or abs(float(row[k]) - v) < 1e-9 if k != "similarity" else row.get(k) in (None, v)
               for k, v in PAPER_ATTACK.items())


def attack_label(row: dict[str, Any]) -> str:
    """The attack's name, with the settings that differ from the defaults: ``aod (cos, T=0.1)``,
    ``margin (kappa=0.5, MI=1, restarts=4)``."""
    diff = []
    if row.get("similarity") not in (None, "dot"):
        diff.append(row["similarity"])
    if row.get("peak") not in (None, "index"):
        diff.append(f"peak={row['peak']}")
    if row.get("temperature") is not None and abs(float(row["temperature"]) - default_temperature(row)) > 1e-9:
        diff.append(f"T={row['temperature']:g}")
    for k, short in (("eps", "eps"), ("step", "step"), ("iters", "iters")):
        if row.get(k) is not None and abs(float(row[k]) - PAPER_ATTACK[k]) > 1e-9:
            diff.append(f"{short}={row[k] * 255:.0f}/255" if k == "eps" else f"{short}={row[k]:g}")
    if row.get("kappa") is not None and abs(float(row["kappa"]) - MARGIN_KAPPA) > 1e-9:
        diff.append(f"kappa={row['kappa']:g}")
    if row.get("margin_focus"):
        diff.append("focus")
    if row.get("target_class") is not None:
        diff.append(f"target={row['target_class']}")
    diff += [fmt.format(row[k]) for k, fmt in LOOP_LABELS.items() if row.get(k) is not None]
    if row.get("eot"):
        diff.append(f"EOT={row['eot']}")
    if row.get("oblivious"):
        diff.append("oblivious")
    return row["attack"] + (f" ({', '.join(diff)})" if diff else "")


def joined_epochs(epochs: Sequence[int]) -> int | str:
    """A row's ``source_epochs``: the epochs of the backbone that made its queries, or an ensemble's joined by '+'
    (``"20+2"``)."""
    return int(epochs[0]) if len(epochs) == 1 else "+".join(str(int(e)) for e in epochs)
