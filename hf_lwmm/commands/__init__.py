"""Sub-commands of ``lwmm-hub``: each module defines ``register(subparsers)`` and sets ``run``."""

from __future__ import annotations

import argparse


def flag_of(name: str) -> str:
    """The command-line flag of a recipe field, method parameter or run option (``start_layer`` → ``--start-layer``)."""
    return "--" + name.replace("_", "-")


def as_flag_error(err: Exception, args: argparse.Namespace) -> Exception:
    """A field error named by its command-line flag when the value came from one (else the error as it is).

    The library names fields (``recipe field 'alpha': 1.5: must lie in [0, 1]``); the command line names
    flags (``--alpha 1.5: must lie in [0, 1]``).
    """
    from hf_lwmm.errors import FieldError, LwmmError

    if not isinstance(err, FieldError):
        return err
    from hf_lwmm.commands.merge import method_parameter_fields

    fields = method_parameter_fields()
    if err.problem == "required" and err.field in fields and getattr(args, "method", None):
        return LwmmError(f"--method {args.method} needs {flag_of(err.field)} ({fields[err.field][1].description})")
    if err.field == "models":  # the positional arguments: no flag to name
        return LwmmError(err.problem)
    value = getattr(args, err.field, None)
    if value is None or value is False:
        return err
    # validators start a problem with the value at fault ("1.5: must lie in [0, 1]")
    flag = flag_of(err.field)
    return LwmmError(f"{flag} {err.problem}" if ": " in err.problem else f"{flag}: {err.problem}")
