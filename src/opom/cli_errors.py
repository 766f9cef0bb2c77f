"""Turn expected user errors into one clear line instead of a traceback.

Two layers:

- :func:`check_command_line` runs in ``run.py`` / ``evaluate.py`` before Hydra starts: it checks every config
  group choice on the command line (against the options Hydra finds, so new files in ``conf/`` count at once),
  composes the job's config — once per value of every swept key in a multirun — and runs the job's own
  validation on it. A bad command line thus ends with one ``error:`` line and exit status 2, before Hydra
  creates any output folder.
- :func:`friendly_errors` wraps the job itself: user errors found later (data, files) become one line too, and
  the job's output folder is removed when it holds nothing but Hydra's bookkeeping.
"""

from __future__ import annotations

import contextlib
import difflib
import itertools
import logging
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from opom.errors import ConfigError, UserError

if TYPE_CHECKING:  # Hydra and OmegaConf are imported where needed: the cloak's commands never load them
    from omegaconf import DictConfig

log = logging.getLogger("opom")
# configs composed to validate a multirun's values (one per value of every swept key, not their product)
MAX_CHECKED_JOBS = 64


def user_error(err: BaseException) -> BaseException | None:
    """The user-caused error behind ``err`` (also through Hydra's instantiation wrapper), else None."""
    if "hydra" in sys.modules:  # only then can it be a Hydra error (commands without Hydra skip the import)
        from hydra.errors import InstantiationException

        while isinstance(err, InstantiationException) and err.__cause__ is not None:
            err = err.__cause__
    if "omegaconf" in sys.modules:
        from omegaconf.errors import InterpolationToMissingValueError, MissingMandatoryValue

        if isinstance(err, (MissingMandatoryValue, InterpolationToMissingValueError)):  # a ??? left to fill in
            text = str(err)
            if "full_key: " in text and not isinstance(err, InterpolationToMissingValueError):
                key = text.split("full_key: ")[-1]  # the path of the ??? itself
            else:  # the ??? an interpolation points at
                key = text.split("Missing mandatory value: ")[-1]
            key = key.split("\n")[0].strip()
            return UserError(f"the config value {key!r} must be given: add {key}=... to the command line")
    return err if isinstance(err, (UserError, FileNotFoundError)) else None


def fail(message: object, to_log: bool = False) -> None:
    """Print ``error: message`` (one line) and exit with status 2; ``to_log``: also into the job's log."""
    text = " ".join(str(message).split())
    if to_log:
        log.error("error: %s", text)
    print(f"error: {text}", file=sys.stderr)
    sys.exit(2)


# Files Hydra writes into a job's folder before the job runs; a folder holding nothing else is removed when the
# job fails on bad input.
def _only_bookkeeping(folder: Path) -> bool:
    for path in folder.rglob("*"):
        if path.is_file() and not (path.relative_to(folder).parts[0] == ".hydra" or path.suffix == ".log"):
            return False
    return True


def _remove_job_folder(folder: Path) -> None:
    """Remove a failed job's folder, and its parent when that is left empty (Hydra's date folder)."""
    shutil.rmtree(folder, ignore_errors=True)
    parent = folder.resolve().parent
    if parent != Path.cwd().resolve() and parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()


@contextlib.contextmanager
def friendly_errors(output_dir: str | Path | None = None):
    """Report user errors as one ``error: ...`` line and exit with status 2; anything else propagates.

    With ``output_dir`` (the job's folder, created by Hydra), a job that fails on bad input before writing
    anything removes that folder. Set ``OPOM_TRACEBACK=1`` to see the full traceback of user errors too.
    """
    try:
        yield
    except Exception as err:  # noqa: BLE001 - filtered just below
        cause = user_error(err)
        if cause is None or os.environ.get("OPOM_TRACEBACK"):
            raise
        if output_dir is not None and Path(output_dir).is_dir() and _only_bookkeeping(Path(output_dir)):
            _remove_job_folder(Path(output_dir))
            fail(cause)
        fail(cause, to_log=True)


# ------------------------------------------------------------------------------------------ the command line
def _close(word: str, choices: list[str]) -> str:
    match = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _group_values(override) -> list:
    """The option names an override of a config group asks for (every value of a sweep, every list item)."""
    if override.is_delete() or override.value_type is None:
        return []
    if override.is_sweep_override():
        if override.value_type.name == "GLOB_CHOICE_SWEEP":
            return []  # matched against the existing options by Hydra itself
        values = list(override.sweep_iterator())
    else:
        values = [override.value()]
    flat = []
    for v in values:
        flat.extend(v if isinstance(v, list) else [v])
    return [v for v in flat if v is not None]


def check_group_choices(overrides, options: Callable[[str], list[str]]) -> None:
    """Raise :class:`ConfigError` for a config group choice that does not exist, naming the valid ones.

    ``overrides``: parsed Hydra overrides; ``options(group)``: the group's options (empty: not a group).
    """
    for override in overrides:
        group = override.key_or_group
        choices = options(group)
        if not choices:
            continue
        for value in _group_values(override):
            if str(value) not in choices:
                example = (f"'{group}=[{choices[0]}]' (a list: several may be chosen)" if group == "blackbox"
                           else f"{group}={choices[0]}")
                raise ConfigError(f"unknown {group} {str(value)!r}{_close(str(value), choices)}; the choices are "
                                  f"{', '.join(choices)} (e.g. {example})")


def _one_line(err: BaseException) -> str:
    """Hydra's multi-line composition messages, made into one line naming the fix."""
    text = str(err)
    cause = err.__cause__
    if text.startswith("Could not override '") and cause is not None:
        key = text.split("'")[1]
        return (f"unknown config key {key!r}: it is neither a setting nor a config group here; to add a new key "
                f"write +{key}=..." + _close(key.split('.')[-1], _siblings(cause)))
    lines = [line.strip() for line in text.splitlines() if line.strip() and "HYDRA_FULL_ERROR" not in line]
    return "; ".join(lines)


def _siblings(cause: BaseException) -> list[str]:
    from omegaconf import DictConfig

    node = getattr(cause, "parent_node", None)
    return [str(k) for k in node.keys()] if isinstance(node, DictConfig) else []


def job_overrides(overrides, sweep_params: dict | None, multirun: bool) -> Iterator[list[str]]:
    """Override lists to compose for checking: with ``multirun``, one per value of every swept key (the other
    keys at their first value; at most :data:`MAX_CHECKED_JOBS`), else the command line itself."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not multirun:
        yield [o.input_line for o in overrides]
        return
    params = [f"{k}={v}" for k, v in (sweep_params or {}).items()]
    given = {o.key_or_group for o in overrides}
    parsed = [o for o in OverridesParser.create().parse_overrides(params) if o.key_or_group not in given]
    parsed += list(overrides)
    choices = []
    for o in parsed:
        if o.is_sweep_override() and o.value_type.name in ("CHOICE_SWEEP", "SIMPLE_CHOICE_SWEEP", "RANGE_SWEEP"):
            choices.append([f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()])
        elif o.is_sweep_override():
            choices.append([])  # glob / interval: expanded by Hydra or its sweeper, not checked here
        else:
            choices.append([o.input_line])
    base = [c[0] for c in choices if c]
    yield base
    jobs = ((i, v) for i, c in enumerate(choices) for v in c[1:])
    for i, value in itertools.islice(jobs, MAX_CHECKED_JOBS - 1):
        index = sum(1 for c in choices[:i] if c)
        yield [*base[:index], value, *base[index + 1:]]


def parse_overrides(args: list[str]) -> list:
    """Hydra's parse of the command-line overrides; :class:`ConfigError` naming the one it cannot read."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    try:
        return parser.parse_overrides(args)
    except HydraException:
        for arg in args:
            try:
                parser.parse_overrides([arg])
            except HydraException as err:
                key = arg.split("=", 1)[0]
                raise ConfigError(f"cannot read {arg!r} ({str(err).splitlines()[0]}): a value with '=', ',', spaces or "
                                  f"brackets must be quoted, e.g. {key}='\"...\"' (the outer quotes for the "
                                  f"shell)") from err
        raise


def check_command_line(config_dir: str | Path, config_name: str,
                       validate: Callable[[DictConfig], None] | None = None, argv: list[str] | None = None) -> None:
    """Check a ``run.py`` / ``evaluate.py`` command line before Hydra runs it; on a problem print one
    ``error:`` line and exit with status 2 (nothing is created). ``validate(cfg)`` is the job's own check of a
    composed config (it raises :class:`UserError`); it is skipped with ``--cfg`` (printing the config)."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.utils import get_args_parser
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    args, _ = get_args_parser().parse_known_args(sys.argv[1:] if argv is None else argv)
    if (args.help or args.hydra_help or args.info or args.shell_completion or args.config_dir or args.config_path
            or args.experimental_rerun or os.environ.get("OPOM_TRACEBACK")):
        return  # Hydra's own modes, or another config folder: left to Hydra
    name = args.config_name or config_name
    try:
        overrides = parse_overrides(args.overrides)
        with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base="1.3"):
            loader = GlobalHydra.instance().config_loader()
            check_group_choices(overrides, lambda group: sorted(loader.get_group_options(group)))
            jobs = list(job_overrides(overrides, None, args.multirun))
            cfg = compose(name, overrides=jobs[0], return_hydra_config=True)
            params = cfg.hydra.sweeper.get("params") if args.multirun else None
            if params:  # the sweep an experiment file declares (hydra.sweeper.params)
                jobs = list(job_overrides(overrides, OmegaConf.to_container(params, resolve=True), True))
                cfg = compose(name, overrides=jobs[0], return_hydra_config=True)
            if validate is not None and not args.cfg:
                _validate(cfg, validate)
                for job in jobs[1:]:
                    _validate(compose(name, overrides=job, return_hydra_config=True), validate)
    except MissingConfigException as err:  # an option named inside a config file, not on the command line
        fail(_one_line(err).split("; Available options")[0])
    except Exception as err:  # noqa: BLE001 - user errors become one line, anything else propagates
        cause = user_error(err)
        if cause is not None:
            fail(cause)
        if isinstance(err, (HydraException, OmegaConfBaseException)):
            fail(_one_line(err))
        raise


def _validate(cfg: DictConfig, validate: Callable[[DictConfig], None]) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import InstantiationException

    HydraConfig.instance().set_config(cfg)
    try:
        validate(cfg)
    except InstantiationException as err:
        cause = user_error(err)
        if cause is None:
            raise
        raise cause from err
