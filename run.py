"""Craft OPOM masks and test them: ``python run.py method=convex_hull surrogate=arcface``."""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from opom.resolvers import register

register()


@hydra.main(config_path="conf", config_name="run", version_base="1.3")
def main(cfg: DictConfig) -> float:
    from opom.cli_errors import friendly_errors
    from opom.pipeline import run

    with friendly_errors(cfg.paths.output_dir):
        results = run(cfg)
    # for Hydra sweepers that optimise a returned value: the mean black-box PSR@1, or on held-out photos the mean
    # protection rate of the held-out families
    key = "protected_rate" if results.get("protocol") == "holdout" else "psr_top1"
    blackbox = [r[key] for r in results["models"].values() if not r["whitebox"] and r.get("held_out", True)]
    return sum(blackbox) / len(blackbox) if blackbox else float("nan")  # nan: an identity shard tests nothing


def check(cfg: DictConfig) -> None:
    from opom.pipeline import validate

    validate(cfg)


if __name__ == "__main__":
    from opom.cli_errors import check_command_line

    check_command_line(Path(__file__).parent / "conf", "run", check)  # one error: line, before any folder
    main()
