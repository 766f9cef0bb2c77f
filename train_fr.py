"""Train a face-recognition model on a folder of aligned faces: ``python train_fr.py data.root=... arch=...``."""

import hydra
from omegaconf import DictConfig


@hydra.main(config_path="conf", config_name="train_fr", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from opom.cli_errors import friendly_errors
    from opom.fr_task import train_fr

    with friendly_errors():
        train_fr(cfg)


if __name__ == "__main__":
    main()
