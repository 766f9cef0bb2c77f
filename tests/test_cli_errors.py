"""Bad command lines end with one ``error:`` line naming the fix and exit status 2, before any folder exists."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from opom.cli_errors import check_command_line, friendly_errors
from opom.errors import UserError
from opom.resolvers import register

register()  # as run.py does before Hydra composes
ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def _validate_run(cfg):
    from opom.pipeline import validate

    validate(cfg)


def _validate_evaluate(cfg):
    from opom.pipeline import validate_saved

    validate_saved(cfg)


def _check(argv, capsys, conf=CONF, name="run", validate=_validate_run):
    """The one error line of ``check_command_line`` for ``argv`` (it must exit with status 2)."""
    with pytest.raises(SystemExit) as exit_info:
        check_command_line(conf, name, validate, argv=argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def _options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("argv,group", [
    (["method=typo"], "method"),
    (["surrogate=nope"], "surrogate"),
    (["attack=nope"], "attack"),
    (["blackbox=[nope]"], "blackbox"),
    (["blackbox=[resnet_cosface,nope]"], "blackbox"),
    (["-m", "method=convex_hull,nope"], "method"),  # a swept value
    (["experiment=nope"], "experiment"),
    (["dataset=nope"], "dataset"),
])
def test_unknown_group_choice_lists_every_option(argv, group, capsys):
    err = _check(argv, capsys)
    assert f"unknown {group} 'nope'" in err or "typo" in err
    assert all(option in err for option in _options(group))


def test_choices_come_from_the_config_folder(tmp_path, capsys):
    """A new file in conf/<group>/ is a valid choice at once: nothing is listed by hand."""
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    shutil.copy(conf / "blackbox" / "resnet_cosface.yaml", conf / "blackbox" / "my_new_model.yaml")
    (conf / "blackbox" / "my_new_model.yaml").write_text(
        (conf / "blackbox" / "resnet_cosface.yaml").read_text().replace("resnet_cosface", "my_new_model"))
    err = _check(["blackbox=[my_new_mdel]"], capsys, conf=conf)
    assert "did you mean 'my_new_model'?" in err
    check_command_line(conf, "run", _validate_run, argv=["blackbox=[my_new_model]"])  # valid: no exit


@pytest.mark.parametrize("argv,message", [
    (["attack.eps=300"], "must be in [1, 255]"),
    (["attack.eps=0.03"], "would be attack.eps=7.65"),
    (["attack.eps=abc"], "attack.eps must be a number"),
    (["attack.step=0"], "attack.step must be > 0"),
    (["-m", "attack.eps=4,300"], "got 300"),  # every swept value is checked, not only the first
    (["-m", "experiment=demo", "attack.eps=999"], "got 999"),  # the experiment's own sweep composes too
    (["evaluation.robustness=[jpeg200]"], "jpeg200"),
    (["evaluation.robustness=[gif]"], "jpeg<quality>, resize<factor> or blur<sigma>"),
    (["attack.epss=3"], "unknown config key 'attack.epss'"),
    (["methd=convex_hull"], "did you mean 'method'?"),
    (["blackbox=[]"], "the black-box panel is empty"),
    (["experiment=paper_commons"], "'paper.weights' must be given"),
    (["dataset=folder"], "'dataset.root' must be given"),
    (["method=convex_hull,class_center"], "--multirun"),
    (["surrogate.arcface.checkpoint=multirun/x/method=a,seed=1/w.pth"],
     "must be quoted, e.g. surrogate.arcface.checkpoint='"),
])
def test_values_that_cannot_work_are_one_line(argv, message, capsys):
    assert message in _check(argv, capsys)


def test_good_command_lines_pass():
    for argv in ([], ["method=affine_hull", "attack=dfanet_mi", "blackbox=[resnet_cosface,sface]"],
                 ["-m", "experiment=demo"], ["-m", "method=convex_hull,class_center", "attack.eps=4,8"]):
        check_command_line(CONF, "run", _validate_run, argv=argv)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_random_bytes_as_weights_are_one_line(suffix, tmp_path, capsys):
    weights = tmp_path / f"w{suffix}"
    weights.write_bytes(os.urandom(5000))
    err = _check([f"surrogate.arcface.checkpoint={weights}"], capsys)
    assert "weights of 'surrogate.arcface'" in err and str(weights) in err


def test_random_bytes_as_a_mask_file_are_one_line(tmp_path, capsys):
    masks = tmp_path / "masks.safetensors"
    masks.write_bytes(os.urandom(5000))
    err = _check([f"masks={masks}"], capsys, name="evaluate", validate=_validate_evaluate)
    assert "is not a readable opom mask file" in err


def test_a_job_that_fails_on_bad_input_leaves_no_folder(tmp_path, capsys):
    job = tmp_path / "outputs" / "2026-01-01" / "10-00-00"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text("{}")
    (job / "run.log").write_text("")
    with pytest.raises(SystemExit), friendly_errors(job):
        raise UserError("dataset folder '/x' does not exist")
    assert capsys.readouterr().err == "error: dataset folder '/x' does not exist\n"
    assert not (tmp_path / "outputs" / "2026-01-01").exists() and (tmp_path / "outputs").exists()
    # a folder that holds results is never removed
    (job / ".hydra").mkdir(parents=True)
    torch.save({}, job / "masks.pt")
    with pytest.raises(SystemExit), friendly_errors(job):
        raise UserError("late")
    assert (job / "masks.pt").exists()


def _cli(script, args, cwd):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("script,args", [
    ("run.py", ["method=typo"]),
    ("run.py", ["attack.eps=300"]),
    ("evaluate.py", ["masks=/nonexistent/masks.safetensors"]),
])
def test_cli_exits_2_with_one_line_and_creates_nothing(script, args, tmp_path):
    proc = _cli(script, args, tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []  # no outputs/ or multirun/ folder


GROUPS = ("method", "attack", "dataset", "surrogate", "blackbox", "logger", "fr_train", "experiment")
EVERY_OPTION = [(g, o) for g in GROUPS for o in _options(g)]


@pytest.mark.parametrize("group,option", EVERY_OPTION, ids=[f"{g}={o}" for g, o in EVERY_OPTION])
def test_every_option_in_the_folder_passes_the_check_or_names_what_it_needs(group, option, capsys):
    """Any file in conf/ (also ones added later) is checked like the rest: it passes, or it fails with one line
    that names what the user must give (weights, data paths) — never a traceback."""
    argv = ["-m", f"{group}={option}"] if group == "experiment" else [
        f"blackbox=[{option}]" if group == "blackbox" else f"{group}={option}"]
    try:
        check_command_line(CONF, "run", _validate_run, argv=argv)
    except SystemExit as exit_info:
        err = capsys.readouterr().err
        assert exit_info.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
        assert "must be given" in err or "needs weights" in err or "not found" in err, err
