"""Keep the console for what matters: silence Lightning's start-up chatter and known-harmless warnings."""

from __future__ import annotations

import logging
import warnings


def quiet_lightning() -> None:
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in (".*LeafSpec.*", ".*does not have many workers.*", ".*Total length of .* across ranks is zero.*",
                    ".*litlogger.*", ".*`training_step` returned `None`.*",
                    ".*configure_optimizers` returned `None`.*", ".*module\\(s\\) in eval mode.*",
                    ".*smaller than the logging interval.*"):
        warnings.filterwarnings("ignore", message=pattern)
