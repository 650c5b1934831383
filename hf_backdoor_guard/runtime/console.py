"""What the command line prints: our stage lines, warnings and the result; every library's bars and logs with -v.

A ``demo`` printed thousands of characters before its table (a Trainer line per epoch,
"Writing model shards" per checkpoint, "Loading weights", datasets' map bars). Under
:func:`quiet_libraries` the Hugging Face libraries log errors only and draw no
progress bars; our own loggers (one line per stage, warnings such as a replaced head
or a skipped checkpoint) and our own bars (image checks, variations, one training bar
per model) stay. The previous settings come back when the block ends, so a Python
caller of ``cli.main`` keeps its own.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from transformers.trainer_callback import ProgressCallback

_quiet = False


def is_quiet() -> bool:
    return _quiet


@contextlib.contextmanager
def quiet_libraries(quiet: bool = True) -> Iterator[None]:
    """Silence datasets', transformers', diffusers' and huggingface_hub's logs and bars inside the block."""
    global _quiet
    if not quiet:
        yield
        return
    import datasets
    import diffusers
    import huggingface_hub.utils as hub_utils
    import transformers

    libraries = (datasets.logging, transformers.logging, diffusers.logging)
    levels = [library.get_verbosity() for library in libraries]
    bars = (datasets.is_progress_bar_enabled(), transformers.logging.is_progress_bar_enabled(),
            not hub_utils.are_progress_bars_disabled())
    for library in libraries:
        library.set_verbosity_error()
    datasets.disable_progress_bars()
    transformers.logging.disable_progress_bar()
    hub_utils.disable_progress_bars()
    _quiet = True
    try:
        yield
    finally:
        _quiet = False
        for library, level in zip(libraries, levels):
            library.set_verbosity(level)
        for enabled, enable in zip(bars, (datasets.enable_progress_bars, transformers.logging.enable_progress_bar,
                                          hub_utils.enable_progress_bars)):
            if enabled:
                enable()


class QuietProgressCallback(ProgressCallback):
    """The Trainer's progress bar without the metrics line it writes at every logging step."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        return None


class QuietTrainerMixin:
    """For our ``Trainer`` subclasses: in a quiet command, one bar per training and no line per epoch."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if _quiet and self.pop_callback(ProgressCallback) is not None:
            self.add_callback(QuietProgressCallback)


__all__ = ["QuietProgressCallback", "QuietTrainerMixin", "is_quiet", "quiet_libraries"]
