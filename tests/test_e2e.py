"""Short end-to-end runs of the main job on a tiny synthetic world, in-process and through the CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig

from opom.cli_errors import friendly_errors
from opom.masks import load_masks
from opom.pipeline import run

ROOT = Path(__file__).resolve().parents[1]


def _cfg(overrides, out, config_name="run"):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name, overrides=[*overrides, f"paths.output_dir={out}"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def test_main_job_writes_results_masks_and_preview(tiny_overrides, tmp_path):
    overrides = [*tiny_overrides, "method=convex_hull", "method.warmup=1", "blackbox=[resnet_cosface]",
                 "evaluation.robustness=[jpeg75,resize0.5,blur1]"]
    results = run(_cfg(overrides, tmp_path))
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk == results
    described = (results["method"], results["attack"], results["surrogate"], results["eps"])
    assert described == ("convex_hull", "fim", "arcface", 8.0)
    assert set(results["models"]) == {"arcface", "resnet_cosface"}
    assert results["models"]["arcface"]["whitebox"] and not results["models"]["resnet_cosface"]["whitebox"]
    for r in results["models"].values():
        required = {"clean_top1", "clean_top5", "clean_top10", "psr_top1", "psr_top5", "psr_top10", "whitebox"}
        assert required <= set(r)
        rates = [k for k in r if k.startswith(("clean_top", "psr_", "tar_"))]
        assert len(rates) == 6 + 8 and all(0.0 <= r[k] <= 1.0 for k in rates)
        assert "psr_at_threshold" not in r  # the small synthetic models have no verification threshold
        assert set(r["per_identity_psr_top1"]) == {"synthetic-00000", "synthetic-00001", "synthetic-00002"}
    assert 30 < results["image_quality"]["psnr"] < 60 and 0 < results["image_quality"]["ssim"] < 1
    # what the job used, recorded beside the numbers
    assert results["dataset"] == {"name": "synthetic", "identities": 3, "mask_images": 4, "test_images": 2,
                                  "distractors": 12, "trials": 3 * 2 * 1}
    assert results["iterations"] == 3 and results["step"] == 1.0
    assert "attack.iterations=3" in results["overrides"] and "method=convex_hull" in results["overrides"]
    assert results["environment"]["torch"] == torch.__version__ and results["environment"]["cpu"]
    for r in results["models"].values():  # rates are whole-number fractions, without float noise
        trials = results["dataset"]["trials"]
        assert all(r[k] in {i / trials for i in range(trials + 1)} for k in r if k.startswith(("clean_top", "psr_top")))
        assert r["low_clean_accuracy"] == (r["clean_top1"] < results["min_clean_top1"])
    metrics = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "eval/resnet_cosface/jpeg75/psr_top1" in metrics and "eval/arcface/psr_top1" in metrics
    for r in results["models"].values():
        assert set(r["robustness"]) == {"jpeg75", "resize0.5", "blur1"}
        for rates in r["robustness"].values():
            assert len(rates) == 6 and all(0.0 <= v <= 1.0 for v in rates.values())
    masks = load_masks(tmp_path / "masks.safetensors")
    assert masks.identities == ["synthetic-00000", "synthetic-00001", "synthetic-00002"]
    assert masks.masks.abs().max() <= 8 / 255 + 1e-7 and masks.masks.abs().max() > 0
    assert (masks.method, masks.surrogate, masks.eps) == ("convex_hull", "arcface", 8.0)
    assert (tmp_path / "masks_preview.png").stat().st_size > 0
    assert (tmp_path / "csv" / "metrics.csv").exists()


def test_wandb_groups_a_sweep_and_names_its_jobs():
    from opom.resolvers import wandb_group, wandb_name

    assert wandb_group("RunMode.MULTIRUN", "multirun/2026-11-29/10-00-00") == "sweep multirun/2026-11-29/10-00-00"
    assert wandb_group("RunMode.RUN", "multirun/x") == wandb_group(None, None) == "runs"
    assert wandb_name("RunMode.MULTIRUN", "method=affine_hull", 3, "outputs/x") == "method=affine_hull"
    assert wandb_name("RunMode.RUN", "", None, "outputs/2026-11-29/10-00-00") == "outputs/2026-11-29/10-00-00"


@pytest.mark.parametrize("override,message", [
    ("attack.eps=0", "attack.eps is the L-inf budget in grey levels and must be in [1, 255]"),
    ("attack.eps=300", "must be in [1, 255]"),
    ("evaluation.robustness=[jpeg200]", "jpeg200"),
    ("dataset.images_per_identity=5", "fewer than dataset.mask_images + dataset.test_images"),
])
def test_bad_input_is_one_clear_line(tiny_overrides, tmp_path, capsys, override, message):
    with pytest.raises(SystemExit) as exit_info, friendly_errors():
        run(_cfg([*tiny_overrides, override], tmp_path))
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def _cli(args, cwd, tiny):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args, *tiny], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_cli_multirun_writes_a_sweep_summary_figures_and_one_wandb_run_per_job(tiny_overrides, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    sweep = tmp_path / "sweep"
    proc = _cli(["-m", "method=random_noise,class_center", "blackbox=[resnet_cosface]", "logger=wandb",
                 f"hydra.sweep.dir={sweep}", "attack.seed=0,1"], tmp_path, tiny_overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = (sweep / "summary.md").read_text()
    assert "| random_noise |" in summary and "| class_center |" in summary and "resnet_cosface" in summary
    assert "| eps | attack.seed | white-box |" in summary  # rows told apart by the swept seed
    for seed in (0, 1):
        assert f"| class_center | fim | arcface | 8 | {seed} |" in summary
    jobs = sorted(p.parent for p in sweep.glob("*/results.json"))
    assert sorted(json.loads((j / "results.json").read_text())["method"] for j in jobs) == [
        "class_center", "class_center", "random_noise", "random_noise"]
    for figure in ("psr_per_model.png", "examples_grid.png"):  # synthetic faces: examples allowed by default
        assert (sweep / figure).stat().st_size > 10_000
    assert not (sweep / "psr_vs_eps.png").exists()  # a single eps: nothing to plot against
    for job in jobs:  # one offline wandb run per job, with the mask preview but no face image
        (run,) = list((job / "wandb").glob("offline-run-*"))
        media = [p.name for p in run.rglob("*.png")]
        assert any(m.startswith("masks_preview") for m in media) and not any("examples" in m for m in media)
    (summary_run,) = list((sweep / "wandb").glob("offline-run-*"))
    assert {p.name.split("_")[0] for p in summary_run.rglob("*.png")} == {"psr"}  # no faces unless enabled


def test_cli_unknown_method_names_the_choices(tmp_path):
    proc = _cli(["method=convex_hul"], tmp_path, [])
    assert proc.returncode == 2
    assert proc.stderr == ("error: unknown method 'convex_hul' (did you mean 'convex_hull'?); the choices are "
                           "affine_hull, class_center, convex_hull, fi_uap, fi_uap_plus, random_noise "
                           "(e.g. method=affine_hull)\n")



@pytest.mark.real
def test_real_surrogate_and_real_black_box_run_offline(tiny_overrides, tmp_path):
    pytest.importorskip("onnx2torch", reason="needs the zoo extra: pip install -e '.[zoo]'")
    pytest.importorskip("dlib", reason="needs the zoo extra: pip install -e '.[zoo]'")
    results = run(_cfg([*tiny_overrides, "surrogate=sface", "blackbox=[dlib,resnet_cosface]", "method=class_center"],
                       tmp_path))
    assert set(results["models"]) == {"sface", "dlib", "resnet_cosface"}
    assert results["models"]["sface"]["whitebox"] and not results["models"]["dlib"]["whitebox"]
    for name, threshold in (("sface", 0.363), ("dlib", 0.6)):  # their own rules: cosine >= 0.363, L2 < 0.6
        r = results["models"][name]
        assert r["threshold"] == threshold and 0 <= r["psr_at_threshold"] <= 1
    assert load_masks(tmp_path / "masks.safetensors").surrogate == "sface"


def test_a_black_box_cannot_be_the_surrogate(tiny_overrides, tmp_path, capsys):
    pytest.importorskip("dlib", reason="needs the zoo extra: pip install -e '.[zoo]'")
    overrides = [*tiny_overrides, "surrogate=arcface", "surrogate.arcface.arch=dlib", "surrogate.arcface.name=dlib"]
    with pytest.raises(SystemExit), friendly_errors():
        run(_cfg(overrides, tmp_path))
    assert "black box" in capsys.readouterr().err


def _eval_cfg(overrides, out):
    return _cfg(overrides, out, config_name="evaluate")


def test_evaluate_retests_saved_masks_from_their_metadata(tiny_overrides, tmp_path):
    from opom.pipeline import evaluate_saved

    crafted = run(_cfg([*tiny_overrides, "method=class_center", "blackbox=[resnet_cosface]"], tmp_path / "run"))
    mask_file = tmp_path / "run" / "masks.safetensors"
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}
    # same panel, nothing but the mask file given: the same numbers, written elsewhere
    again = evaluate_saved(_eval_cfg([f"masks={mask_file}"], tmp_path / "eval"))
    assert again["models"] == crafted["models"]
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["masks"] == str(mask_file.resolve())
    # another panel and a robustness setting, without the surrogate
    other = evaluate_saved(_eval_cfg([f"masks={mask_file}", "blackbox=[mobilefacenet_softmax]", "whitebox=false",
                                      "evaluation.robustness=[jpeg50]"], tmp_path / "eval2"))
    assert set(other["models"]) == {"mobilefacenet_softmax"} and set(other["models"]["mobilefacenet_softmax"]
                                                                      ["robustness"]) == {"jpeg50"}
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()} == before


def test_evaluate_without_or_with_foreign_masks_is_one_clear_line(tmp_path, capsys):
    from opom.masks import MaskSet, save_masks
    from opom.pipeline import evaluate_saved

    with pytest.raises(SystemExit), friendly_errors():
        evaluate_saved(_eval_cfg([], tmp_path))
    assert "give masks=" in capsys.readouterr().err
    save_masks(tmp_path / "m.safetensors", MaskSet(torch.zeros(1, 3, 4, 4), ["x"], "s", "m", "a", 8.0, 4))
    with pytest.raises(SystemExit), friendly_errors():
        evaluate_saved(_eval_cfg([f"masks={tmp_path / 'm.safetensors'}"], tmp_path))
    assert "no crafting config" in capsys.readouterr().err
