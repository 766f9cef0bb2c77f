"""Re-test saved masks against any panel and robustness setting, without re-crafting:
``python evaluate.py masks=path/to/masks.safetensors 'blackbox=[sface,dlib]'``."""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from opom.resolvers import register

register()


@hydra.main(config_path="conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> float:
    from opom.cli_errors import friendly_errors
    from opom.pipeline import evaluate_saved

    with friendly_errors(cfg.paths.output_dir):
        results = evaluate_saved(cfg)
    blackbox = [r["psr_top1"] for r in results["models"].values() if not r["whitebox"]]
    return sum(blackbox) / max(len(blackbox), 1)


def check(cfg: DictConfig) -> None:
    from opom.pipeline import validate_saved

    validate_saved(cfg)


if __name__ == "__main__":
    from opom.cli_errors import check_command_line

    check_command_line(Path(__file__).parent / "conf", "evaluate", check)  # one error: line, before any folder
    main()
