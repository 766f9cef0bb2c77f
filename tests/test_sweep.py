"""Sweep aggregation on hand-written results: tables, long CSV and figures hold the known numbers."""

import csv
import json
import os

import pytest
from PIL import Image

from opom.evaluation.sweep import collect, write_summary


def _job(sweep, name, method, eps, cosface, mobile, order, overrides=None, clean=0.9, mobile_clean=0.8):
    models = {"arcface": {"whitebox": True, "psr_top1": 1.0, "clean_top1": 0.99, "psr_top5": 0.9},
              "resnet_cosface": {"whitebox": False, "psr_top1": cosface, "clean_top1": clean, "psr_top5": cosface / 2},
              "mobilefacenet": {"whitebox": False, "psr_top1": mobile, "clean_top1": mobile_clean,
                                "psr_top5": mobile / 2, "low_clean_accuracy": mobile_clean < 0.5}}
    job = sweep / name
    job.mkdir(parents=True)
    path = job / "results.json"
    path.write_text(json.dumps({"method": method, "attack": "fim", "surrogate": "arcface", "eps": eps,
                                "min_clean_top1": 0.5, "models": models,
                                **({"overrides": overrides} if overrides is not None else {})}))
    os.utime(path, ns=(order * 10**9, order * 10**9))  # job order = modification order
    Image.new("RGB", (200, 300), (128, 128, 128)).save(job / "examples.png")


def test_summary_tables_long_csv_and_figures(tmp_path):
    _job(tmp_path, "b", "convex_hull", 8.0, 0.5, 0.25, order=2)
    _job(tmp_path, "a", "random_noise", 8.0, 0.1, 0.05, order=1)
    _job(tmp_path, "c", "convex_hull", 4.0, 0.3, 0.15, order=3)
    (tmp_path / "shard").mkdir()
    (tmp_path / "shard" / "results.json").write_text(json.dumps({"method": "x", "models": {}}))  # left out
    rows, figures = write_summary(tmp_path)
    assert [(r["method"], r["eps"]) for r in rows] == [("random_noise", 8.0), ("convex_hull", 8.0),
                                                       ("convex_hull", 4.0)]
    assert [r["mean"] for r in rows] == pytest.approx([0.075, 0.375, 0.225])
    summary = (tmp_path / "summary.md").read_text()
    assert "| convex_hull | fim | arcface | 8 | 1.000 | 0.500 | 0.250 | 0.375 |" in summary
    assert "| *clean top-1 accuracy* | | | | | 0.900 | 0.800 | |" in summary
    assert "PSR@5" in summary and "| convex_hull | fim | arcface | 8 | 0.900 | 0.250 | 0.125 | 0.188 |" in summary
    assert "PSR@10" not in summary  # not measured by these jobs
    assert [r["mean"] for r in collect(tmp_path, 5)] == pytest.approx([0.0375, 0.1875, 0.1125])
    with open(tmp_path / "summary_long.csv") as f:
        long = list(csv.DictReader(f))
    assert len(long) == 3 * 3 * 3  # jobs x models x scalar metrics (flags are not metrics)
    assert {"job": "b", "model": "mobilefacenet", "metric": "psr_top1", "value": "0.25"}.items() <= long[
        [i for i, r in enumerate(long) if r["job"] == "b" and r["model"] == "mobilefacenet"][0]].items()
    assert set(figures) == {"psr_per_model", "psr_vs_eps", "examples"}
    for path in figures.values():
        assert Image.open(path).size[0] > 250


def test_one_eps_makes_no_eps_plot_and_no_examples_no_grid(tmp_path):
    _job(tmp_path, "a", "class_center", 8.0, 0.4, 0.2, order=1)
    (tmp_path / "a" / "examples.png").unlink()  # real people: no faces in figures
    _, figures = write_summary(tmp_path)
    assert set(figures) == {"psr_per_model"}
    assert not (tmp_path / "psr_vs_eps.png").exists() and not (tmp_path / "examples_grid.png").exists()


def test_rows_are_told_apart_by_every_swept_setting(tmp_path):
    """``-m attack.iterations=2,16 seed=0,1``: the rows differ only in those settings, so those become columns
    (read from the jobs' overrides; from Hydra's .hydra/overrides.yaml for results that do not list them)."""
    common = ["experiment=demo", "method=convex_hull"]
    _job(tmp_path, "j0", "convex_hull", 8.0, 0.2, 0.1, 1, [*common, "attack.iterations=2", "dataset.seed=0"])
    _job(tmp_path, "j1", "convex_hull", 8.0, 0.4, 0.3, 2, [*common, "attack.iterations=16", "dataset.seed=0"])
    _job(tmp_path, "j2", "convex_hull", 8.0, 0.3, 0.2, 3, None, clean=0.95, mobile_clean=0.34)
    (tmp_path / "j2" / ".hydra").mkdir()
    (tmp_path / "j2" / ".hydra" / "overrides.yaml").write_text(
        "- experiment=demo\n- method=convex_hull\n- attack.iterations=16\n- dataset.seed=1\n")
    rows, figures = write_summary(tmp_path)
    assert [r["settings"] for r in rows] == [{"attack.iterations": "2", "dataset.seed": "0"},
                                             {"attack.iterations": "16", "dataset.seed": "0"},
                                             {"attack.iterations": "16", "dataset.seed": "1"}]
    summary = (tmp_path / "summary.md").read_text()
    assert "| method | attack | surrogate | eps | attack.iterations | dataset.seed | white-box |" in summary
    assert "| convex_hull | fim | arcface | 8 | 2 | 0 | 1.000 | 0.200 | 0.100 | 0.15 |" not in summary
    assert "| convex_hull | fim | arcface | 8 | 2 | 0 | 1.000 | 0.200 | 0.100 | 0.150 |" in summary
    # the worlds differ (dataset.seed): the clean accuracy is a range; a model below the floor is flagged
    assert "| *clean top-1 accuracy* | | | | | | | 0.900-0.950 | 0.340-0.800 (!) | |" in summary
    assert "(!) clean top-1 below 0.5" in summary
    with open(tmp_path / "summary.csv") as f:
        table = list(csv.DictReader(f))
    assert [(r["attack.iterations"], r["dataset.seed"], r["mean"]) for r in table] == [
        ("2", "0", "0.15"), ("16", "0", "0.35"), ("16", "1", "0.25")]  # means without float noise
    assert Image.open(figures["psr_per_model"]).size[0] > 300


def test_jobs_with_different_panels_share_one_table(tmp_path):
    _job(tmp_path, "a", "convex_hull", 8.0, 0.4, 0.2, 1, ["blackbox=[resnet_cosface,mobilefacenet]"])
    _job(tmp_path, "b", "convex_hull", 8.0, 0.3, 0.1, 2, ["blackbox=[resnet_cosface,mobilefacenet,dlib]"])
    res = json.loads((tmp_path / "b" / "results.json").read_text())
    res["models"]["dlib"] = {"whitebox": False, "psr_top1": 0.7, "clean_top1": 0.34, "low_clean_accuracy": True}
    (tmp_path / "b" / "results.json").write_text(json.dumps(res))
    os.utime(tmp_path / "b" / "results.json", ns=(2 * 10**9, 2 * 10**9))
    rows, figures = write_summary(tmp_path)
    summary = (tmp_path / "summary.md").read_text()
    assert "| blackbox | white-box | resnet_cosface | mobilefacenet | dlib | mean |" in summary
    assert "| [resnet_cosface,mobilefacenet] | 1.000 | 0.400 | 0.200 | nan | 0.300 |" in summary
    assert "| 0.900 | 0.800 | 0.340 (!) | |" in summary
    assert set(figures) == {"psr_per_model", "examples"}
