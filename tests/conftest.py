import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Rendered data and trained models of the tests go to a throwaway cache, never the user's."""
    cache = tmp_path_factory.mktemp("opom-cache")
    old = os.environ.get("OPOM_CACHE_DIR")
    os.environ["OPOM_CACHE_DIR"] = str(cache)
    os.environ.setdefault("WANDB_MODE", "offline")
    yield Path(cache)
    if old is None:
        os.environ.pop("OPOM_CACHE_DIR", None)
    else:
        os.environ["OPOM_CACHE_DIR"] = old


# a world small enough to train and craft in seconds (values are Hydra overrides)
TINY = [
    "dataset.identities=3", "dataset.images_per_identity=6", "dataset.mask_images=4", "dataset.test_images=2",
    "dataset.distractors=12", "dataset.train_identities=6", "dataset.train_images=3", "fr_train.epochs=1",
    "fr_train.batch_size=18", "attack.iterations=3", "trainer.enable_progress_bar=false",
]


@pytest.fixture
def tiny_overrides():
    return list(TINY)
