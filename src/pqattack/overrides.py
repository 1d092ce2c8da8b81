"""The command line's overrides, composed once before Hydra runs the job: an unknown config option or key, a value
of the wrong type or an override that does not parse is then one line naming the key and what is allowed (exit 2,
nothing written), instead of Hydra's several lines (with the config search path, the groups' private ``_``-files
among the options, and advice to append the key with ``+``)."""

from __future__ import annotations

import difflib
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .errors import ConfigError


def _first_line(exc: BaseException | None) -> str:
    text = str(exc) if exc is not None else ""
    return text.splitlines()[0].strip() if text.strip() else ""


def _override_of(key: str, overrides: list[str], message: str = "") -> str:
    """The command line's override that sets ``key`` (``attack.eps=x``, ``+attack.eps=x``) to the value ``message``
    quotes (else the last one that sets it), else ``key`` alone."""
    setting = [o.lstrip("+~") for o in overrides if o.lstrip("+~").split("=", 1)[0].split("@", 1)[0] == key]
    quoted = [o for o in setting if f"'{o.split('=', 1)[-1]}'" in message]
    return (quoted or setting or [key])[-1]


def did_you_mean(name: str, candidates: list[str], parent: str = "") -> str:
    """``"; did you mean attack.kappa?"``: the candidates that look like ``name`` (under ``parent``), or nothing."""
    near = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(f'{parent}.{k}' if parent else k for k in near)}?" if near else ""


def _keys_near(key: str, overrides: list[str], compose: Any) -> str:
    """What to say about an unknown ``key``: the keys of its parent node that look like it, else all of them (up to
    a dozen), from the config the other overrides compose."""
    parent, _, leaf = key.rpartition(".")
    try:
        cfg = compose([o for o in overrides if o.lstrip("+~").split("=", 1)[0] != key])
    except Exception:  # noqa: BLE001  the other overrides do not compose either: say no more than the key
        return ""
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if not isinstance(node, DictConfig):
        return ""
    keys = [str(k) for k in node.keys() if not str(k).startswith("_") and k != "hydra"]
    hint = did_you_mean(leaf, keys, parent)
    if hint:
        return hint
    if len(keys) <= 12:
        return f"; {parent or 'the config'} has: {', '.join(sorted(keys))}"
    return f"; `python -m pqattack --cfg job` lists all {len(keys)} keys{f' of {parent}' if parent else ''}"


def explain(exc: BaseException, overrides: list[str], compose: Any, swept: set[str] | None = None) -> str:
    """One line for a Hydra or OmegaConf error raised while composing ``overrides`` (``compose(overrides)`` composes
    a config, for the keys of an unknown key's parent; ``swept``: the config groups a sweep sweeps, which Hydra
    composes at their default option first)."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    cause = exc.__cause__
    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file and "/" in exc.missing_cfg_file:
        group, _, name = exc.missing_cfg_file.rpartition("/")
        options = sorted(o for o in (exc.options or []) if not o.startswith("_"))
        allowed = f"allowed: {', '.join(options)}" if options else "the group has no options"
        return f"{group}={name}: not an option of {group}; {allowed}"
    if isinstance(exc, OverrideParseException):
        from hydra.core.override_parser.overrides_parser import OverridesParser

        bad = next((o for o in overrides if _parses(OverridesParser.create(), o) is False), None)
        what = f"override {bad!r}" if bad else "an override"
        return f"{what}: {_first_line(exc)} (an override is key=value; quote lists and special characters)"
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and getattr(cause, "full_key", None):
        key = str(cause.full_key)
        group = key.split(".", 1)[0]
        if swept and group in swept:
            return (f"{key}: no such key in the default {group} option; a sweep over {group} is composed with its "
                    f"default option first (Hydra's rule), so a key of the swept options only cannot be set on the "
                    f"command line: sweep it per option in a preset, or run one sweep per {group}")
        return f"{key}: no such key{_keys_near(key, overrides, compose)}"
    if isinstance(cause, ValidationError) and getattr(cause, "full_key", None):
        key = str(cause.full_key)
        return f"{_override_of(key, overrides, _first_line(cause))}: {_first_line(cause)}"
    lines = []
    for ln in str(exc).replace(", set env var HYDRA_FULL_ERROR=1 to see chained exception.", ".").splitlines():
        if ln.startswith("Config search path"):
            break
        if ln.strip() and not ln.startswith(("See https://", "To append to your config")):
            lines.append(ln.strip())
    first = _first_line(cause)
    return " ".join(lines) + (f" ({first})" if first and first not in lines else "")


def _parses(parser: Any, override: str) -> bool:
    from hydra.errors import OverrideParseException

    try:
        parser.parse_overrides([override])
    except OverrideParseException:
        return False
    return True


def compose_errors() -> tuple[type[BaseException], ...]:
    """What Hydra and OmegaConf raise for a config that does not compose."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return HydraException, OmegaConfBaseException


def check_command_line(argv: list[str]) -> None:
    """``ConfigError`` (one line) when the overrides of ``python -m pqattack <argv>`` do not compose as Hydra would
    compose them: a job's, or a sweep's without its swept values (the sweep's own check then composes every job).
    Left to Hydra: its own flags (``--help``, ``--cfg``, ``--info``, shell completion, ``--experimental-rerun``) and a
    config folder or name of the user's (``--config-dir``, ``--config-path``, ``--config-name``)."""
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    from .config import compose_config

    if "--version" in argv:
        return
    try:
        args, rest = get_args_parser().parse_known_args(argv)
    except SystemExit:  # argparse's own usage error: Hydra reports it as before
        return
    if rest or (args.help or args.hydra_help or args.cfg or args.info or args.shell_completion or args.experimental_rerun
            or args.config_dir or args.config_path or args.config_name):
        return
    overrides = list(args.overrides)
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as exc:
        raise ConfigError(explain(exc, overrides, compose_config)) from None
    # a sweep (-m, or a preset with hydra.mode MULTIRUN): Hydra composes its config without the swept values first
    # (a swept group at its default option); the sweep's own check (config.ValidateSweep) then composes every job
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    swept = {o.get_key_element() for o in parsed if o.is_sweep_override()}
    try:
        cfg = compose_config(fixed, with_hydra=True)
        mode = cfg.hydra.get("mode")
        if swept and not (args.multirun or getattr(mode, "name", mode) == "MULTIRUN"):
            fixed, swept = overrides, set()  # one job with a sweep-like value: Hydra's refusal, on one line
            compose_config(overrides)
    except compose_errors() as exc:
        raise ConfigError(explain(exc, fixed, compose_config, swept)) from None
    except Exception:  # noqa: BLE001  anything else: Hydra reports it, as before (e.g. sweeping its own keys)
        return
