"""How a run talks to the terminal: how much the libraries say, our own notes, and the one progress-bar factory.

Three verbosity levels. ``QUIET``: errors and the final result only, no bars. ``NORMAL`` (the default):
our notes and one bar per long stage on a terminal, the libraries silenced. ``VERBOSE``: the libraries'
own logs, warnings and bars back at their defaults.

The libraries are silenced through their own verbosity controls. One that is already imported is set
through its logging module; one that is not is set through the environment variable it reads when it
is first imported, so that a command does not pay for importing a library it may never use.
Bars appear only when stderr is a terminal (a redirected log gets no carriage returns), and only one
at a time: a stage inside a stage that already shows a bar shows none.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import warnings
from collections.abc import Iterable
from enum import IntEnum
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")


class Verbosity(IntEnum):
    QUIET = -1
    NORMAL = 0
    VERBOSE = 1


#: library → (its logging module with ``set_verbosity``, the environment variable it reads on import)
LIBRARY_LOGGING = {
    "huggingface_hub": ("huggingface_hub.utils.logging", "HF_HUB_VERBOSITY"),
    "transformers": ("transformers.utils.logging", "TRANSFORMERS_VERBOSITY"),
    "datasets": ("datasets.utils.logging", "DATASETS_VERBOSITY"),
    "evaluate": ("evaluate.utils.logging", "EVALUATE_VERBOSITY"),
}
#: libraries that log through a plain :mod:`logging` logger of their name, with no control of their own
PLAIN_LOGGERS = ("accelerate",)
#: modules whose Python warnings are silenced (``warnings.warn`` calls the libraries offer no switch for)
WARNING_MODULES = r"(transformers|huggingface_hub|datasets|evaluate|accelerate|torch|safetensors)(\.|$)"

#: level names the libraries' environment variables take
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR,
           "critical": logging.CRITICAL}

#: the process's verbosity, how many bars are shown now, and the user's values of environment variables overridden
_state: dict[str, Any] = {"verbosity": Verbosity.NORMAL, "open_bars": 0, "environment": {}}


def verbosity() -> Verbosity:
    return _state["verbosity"]


def configure(level: Verbosity) -> None:
    """Set how much the libraries and our own notes and bars say for the rest of the process."""
    _state["verbosity"] = Verbosity(level)
    silent = level < Verbosity.VERBOSE
    for library, (module, variable) in LIBRARY_LOGGING.items():
        _set_library_level(library, module, variable, silent=silent)
    for name in PLAIN_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR if silent else logging.NOTSET)
    _set_library_bars(enabled=not silent)
    _set_library_warnings(silent=silent)


def _set_library_level(library: str, module: str, variable: str, *, silent: bool) -> None:
    if library in sys.modules or library == "huggingface_hub":  # the Hub client is light and used by most commands
        default = _LEVELS.get(str(_original(variable) or "").lower(), logging.WARNING)
        importlib.import_module(module).set_verbosity(logging.ERROR if silent else default)
    else:
        _set_environment(variable, "error" if silent else None)


def _original(variable: str) -> str | None:
    """The user's value of an environment variable this module may have overridden."""
    saved: dict[str, str | None] = _state["environment"]
    return saved[variable] if variable in saved else os.environ.get(variable)


def _set_environment(variable: str, value: str | None) -> None:
    """Override an environment variable (``value``), or give the user's value back (``None``)."""
    saved: dict[str, str | None] = _state["environment"]
    if value is not None:
        saved.setdefault(variable, os.environ.get(variable))
        os.environ[variable] = value
    elif variable in saved:
        original = saved.pop(variable)
        if original is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = original


def _set_library_bars(*, enabled: bool) -> None:
    """huggingface_hub's switch (transformers reads it on import); transformers' and datasets' once imported,
    else the environment variable datasets reads on import."""
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    with warnings.catch_warnings():  # a user's HF_*_DISABLE_PROGRESS_BARS has priority, and the library warns about it
        warnings.simplefilter("ignore")
        (enable_progress_bars if enabled else disable_progress_bars)()
        if "transformers" in sys.modules:
            from transformers.utils import logging as transformers_logging

            (transformers_logging.enable_progress_bar if enabled else transformers_logging.disable_progress_bar)()
        if "datasets" in sys.modules:
            from datasets import utils as datasets_utils

            (datasets_utils.enable_progress_bars if enabled else datasets_utils.disable_progress_bars)()
        else:
            _set_environment("HF_DATASETS_DISABLE_PROGRESS_BARS", None if enabled else "1")


def _set_library_warnings(*, silent: bool) -> None:
    ours = [item for item in warnings.filters if item[0] == "ignore" and getattr(item[3], "pattern", None) == WARNING_MODULES]
    if silent and not ours:
        warnings.filterwarnings("ignore", module=WARNING_MODULES)
    elif not silent and ours:
        for item in ours:
            warnings.filters.remove(item)  # type: ignore[attr-defined]  # a list at run time (typeshed: Sequence)
        # through the public call, so that warnings remembered as ignored are shown again (a last-place "default" changes nothing else)
        warnings.filterwarnings("default", module=WARNING_MODULES, append=True)


def note(*lines: str) -> None:
    """Print lines that explain the result (where files went, what a column means): not in quiet runs."""
    if verbosity() > Verbosity.QUIET:
        print(*lines, sep="\n")


def bars_enabled() -> bool:
    """Whether a bar would show now: not quiet, stderr is a terminal, no other bar open."""
    on_terminal = getattr(sys.stderr, "isatty", lambda: False)()
    return verbosity() > Verbosity.QUIET and on_terminal and not _state["open_bars"]


class _StageBar(tqdm):
    """A tqdm bar that counts itself as open while shown, so that bars inside its stage stay hidden."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._counted = not self.disable
        if self._counted:
            _state["open_bars"] += 1

    def close(self) -> None:
        if getattr(self, "_counted", False):
            self._counted = False
            _state["open_bars"] -= 1
        super().close()


def progress_bar(iterable: Iterable[T] | None = None, *, desc: str, unit: str, total: int | None = None,
                 enabled: bool = True, **options: Any) -> Any:
    """The progress bar of a long stage (a tqdm bar, iterable or updated by hand); hidden unless
    ``enabled`` and :func:`bars_enabled`."""
    return _StageBar(iterable, desc=desc, unit=unit, total=total, disable=not (enabled and bars_enabled()),
                     dynamic_ncols=True, **options)
