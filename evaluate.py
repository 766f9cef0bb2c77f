"""Re-test saved masks against any panel and robustness setting, without re-crafting:
``python evaluate.py masks=path/to/masks.safetensors 'blackbox=[sface,dlib]'``."""

import hydra
from omegaconf import DictConfig

from opom.resolvers import register

register()


@hydra.main(config_path="conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> float:
    from opom.cli_errors import friendly_errors
    from opom.pipeline import evaluate_saved

    with friendly_errors():
        results = evaluate_saved(cfg)
    blackbox = [r["psr_top1"] for r in results["models"].values() if not r["whitebox"]]
    return sum(blackbox) / max(len(blackbox), 1)


if __name__ == "__main__":
    main()
