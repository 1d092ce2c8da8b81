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


def _override_of(key: str, overrides: list[str]) -> str:
    """The command line's override that sets ``key`` (``attack.eps=x``, ``+attack.eps=x``), else ``key`` alone."""
    for o in overrides:
        if o.lstrip("+~").split("=", 1)[0].split("@", 1)[0] == key:
            return o.lstrip("+~")
    return key


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
    near = difflib.get_close_matches(leaf, keys, n=3, cutoff=0.6)
    if near:
        return f"; did you mean {' or '.join(f'{parent}.{k}' if parent else k for k in near)}?"
    if len(keys) <= 12:
        return f"; {parent or 'the config'} has: {', '.join(sorted(keys))}"
    return f"; `python -m pqattack --cfg job` lists all {len(keys)} keys{f' of {parent}' if parent else ''}"


def explain(exc: BaseException, overrides: list[str], compose: Any) -> str:
    """One line for a Hydra or OmegaConf error raised while composing ``overrides`` (``compose(overrides)`` composes
    a config, for the keys of an unknown key's parent)."""
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
        return f"{key}: no such key{_keys_near(key, overrides, compose)}"
    if isinstance(cause, ValidationError) and getattr(cause, "full_key", None):
        key = str(cause.full_key)
        return f"{_override_of(key, overrides)}: {_first_line(cause)}"
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
    """``ConfigError`` (one line) when the overrides of ``python -m pqattack <argv>`` do not compose. A sweep's
    overrides are composed one swept value at a time (the sweep's own check then composes and checks every job).
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
    runs = [overrides]
    if args.multirun:
        fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
        runs = [fixed] + [[*fixed, f"{o.get_key_element()}={v}"] for o in parsed if o.is_sweep_override()
                          for v in _values(o)]
    for run in runs:
        try:
            cfg = compose_config(run)
        except compose_errors() as exc:
            raise ConfigError(explain(exc, run, compose_config)) from None
        _check_added_keys(cfg, [o for o in parsed if o.is_add()])


def _check_added_keys(cfg: DictConfig, added: list[Any]) -> None:
    """``+attack.kapa=1`` composes (``+`` adds a key), but a node with a schema (attack, quantizer, index,
    defense) is read through its dataclass, which would drop the key without a word."""
    import dataclasses

    for o in added:
        key = o.get_key_element().lstrip("+")
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else None
        schema = OmegaConf.get_type(node) if isinstance(node, DictConfig) else None
        if schema is not None and dataclasses.is_dataclass(schema):
            fields = [f.name for f in dataclasses.fields(schema)]
            if leaf not in fields:
                near = difflib.get_close_matches(leaf, fields, n=3, cutoff=0.6)
                hint = f"; did you mean {' or '.join(f'{parent}.{k}' for k in near)}?" if near else ""
                raise ConfigError(f"+{key}: {parent} has no setting {leaf!r} ({schema.__name__} would ignore "
                                  f"it){hint}")


def _values(override: Any) -> list[str]:
    """A sweep override's values (``a,b``, ``choice(...)``, ``range(...)``); none for those only the sweeper expands
    (``glob(...)``, intervals), which Hydra then composes itself."""
    try:
        return list(override.sweep_string_iterator())
    except Exception:  # noqa: BLE001
        return []
