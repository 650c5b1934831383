"""Sharing on the Hugging Face Hub: publishing a robust model or a cleaned dataset and loading a
published model back (``publish``); the staging folder that holds exactly the files a publish
uploads, and never touches a user's own (``staging``); and the model and dataset cards,
rendered from the templates in the top-level ``model_cards/`` folder (``cards``). Names are
imported on first use, so importing the package loads no Hub client.
"""

from __future__ import annotations

from ..lazy import lazy_exports

# the public names (as the old single modules offered them) -> the module defining each; imported on first use
_EXPORTS = {
    "PublishError": "publish",
    "RobustModel": "publish",
    "publish_model": "publish",
    "load_robust_model": "publish",
    "publish_dataset": "publish",
    "read_metrics_file": "publish",
    "publish_path": "publish",
    "CardInfo": "cards",
    "build_model_card": "cards",
    "build_dataset_card": "cards",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, globals(), _EXPORTS)


def __dir__():
    return sorted(set(globals()) | set(__all__))
