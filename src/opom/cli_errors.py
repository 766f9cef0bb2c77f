"""Turn expected user errors into one clear line instead of a traceback."""

from __future__ import annotations

import contextlib
import logging
import os
import sys

from opom.errors import UserError

log = logging.getLogger("opom")


def user_error(err: BaseException) -> BaseException | None:
    """The user-caused error behind ``err`` (also through Hydra's instantiation wrapper), else None."""
    if "hydra" in sys.modules:  # only then can it be a Hydra error (commands without Hydra skip the import)
        from hydra.errors import InstantiationException

        while isinstance(err, InstantiationException) and err.__cause__ is not None:
            err = err.__cause__
    if "omegaconf" in sys.modules:
        from omegaconf.errors import InterpolationToMissingValueError, MissingMandatoryValue

        if isinstance(err, (MissingMandatoryValue, InterpolationToMissingValueError)):  # a ??? left to fill in
            key = str(err).split("Missing mandatory value: ")[-1].split("\n")[0].strip()
            return UserError(f"the config value {key!r} must be given: add {key}=... to the command line")
    return err if isinstance(err, (UserError, FileNotFoundError)) else None


@contextlib.contextmanager
def friendly_errors():
    """Report user errors as one ``error: ...`` line and exit with status 2; anything else propagates.

    Set ``OPOM_TRACEBACK=1`` to see the full traceback of user errors too.
    """
    try:
        yield
    except Exception as err:  # noqa: BLE001 - filtered just below
        cause = user_error(err)
        if cause is None or os.environ.get("OPOM_TRACEBACK"):
            raise
        log.error("error: %s", cause)
        print(f"error: {cause}", file=sys.stderr)
        sys.exit(2)
