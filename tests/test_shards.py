"""Identity shards: the ranges tile the protection set, merging checks its inputs, and two processes
(Hydra's joblib launcher) craft exactly the masks of one process."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig

from opom.errors import ConfigError, UserError
from opom.masks import MaskSet, load_masks, save_masks
from opom.pipeline import run
from opom.shards import Shard, merge_mask_files, merge_mask_sets, shard_trainer

ROOT = Path(__file__).resolve().parents[1]
# a 5-person world crafted 2 people per batch: 3 batches, so 2 shards hold 1 and 2 batches (2 and 3 people)
SHARDED = ["dataset.identities=5", "identities_per_batch=2", "blackbox=[resnet_cosface]"]
HULL = ["method=convex_hull", "method.warmup=1"]


@pytest.mark.parametrize("people,per_batch,count", [(5, 2, 2), (30, 16, 2), (100, 16, 7), (7, 1, 7), (64, 16, 4)])
def test_shards_are_blocks_of_whole_batches_that_tile_the_set(people, per_batch, count):
    ranges = [Shard(i, count).bounds(people, per_batch) for i in range(count)]
    assert ranges[0][0] == 0 and ranges[-1][1] == people
    for (_, stop), (start, _) in zip(ranges, ranges[1:], strict=False):
        assert stop == start and start % per_batch == 0
    assert all(stop > start for start, stop in ranges)


def test_bad_shard_settings_name_the_fix():
    with pytest.raises(ConfigError, match="shard.index must be in 0..1"):
        Shard(2, 2)
    with pytest.raises(ConfigError, match="shard.count must be >= 1"):
        Shard(0, 0)
    with pytest.raises(ConfigError, match="lower shard.count to at most 2"):
        Shard(0, 3).bounds(30, 16)


def test_each_shard_gets_its_own_gpu_when_there_are_several():
    trainer = {"accelerator": "auto", "devices": 1, "precision": "32-true"}
    assert shard_trainer(trainer, Shard(3, 4), cuda_devices=2)["devices"] == [1]
    assert shard_trainer(trainer, Shard(3, 4), cuda_devices=0) == trainer
    assert shard_trainer(trainer, Shard(0, 1), cuda_devices=2) == trainer
    assert shard_trainer({**trainer, "devices": 2}, Shard(1, 2), cuda_devices=2)["devices"] == 2


def _part(index, count, start, stop, total, method="convex_hull"):
    masks = torch.arange(start, stop, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 3, 4, 4).clone()
    config = {"method": {"name": method}, "shard": {"index": index, "count": count, "start": start, "stop": stop,
                                                   "total": total}, "paths": {"output_dir": f"/o/{index}"}}
    return (f"s{index}", MaskSet(masks, [f"p{i}" for i in range(start, stop)], "arcface", method, "fim", 8.0,
                                 image_size=4, extra={"config": config}))


def test_merge_orders_shards_and_checks_them():
    merged = merge_mask_sets([_part(2, 3, 4, 5, 5), _part(0, 3, 0, 2, 5), _part(1, 3, 2, 4, 5)])
    assert merged.identities == [f"p{i}" for i in range(5)]
    assert torch.equal(merged.masks[:, 0, 0, 0], torch.arange(5.0))
    assert merged.extra["config"]["shard"] == {"index": 0, "count": 1, "start": 0, "stop": 5, "total": 5}
    with pytest.raises(UserError, match="missing shard 1 of 3"):
        merge_mask_sets([_part(0, 3, 0, 2, 5), _part(2, 3, 4, 5, 5)])
    with pytest.raises(UserError, match="shard 0 appears twice"):
        merge_mask_sets([_part(0, 2, 0, 2, 5), _part(0, 2, 0, 2, 5), _part(1, 2, 2, 5, 5)])
    with pytest.raises(UserError, match="different jobs"):
        merge_mask_sets([_part(0, 2, 0, 2, 5), _part(1, 2, 2, 5, 5, method="affine_hull")])
    with pytest.raises(UserError, match="starts at identity 3, expected 2"):
        merge_mask_sets([_part(0, 2, 0, 2, 5), _part(1, 2, 3, 5, 5)])
    whole = _part(0, 1, 0, 5, 5)[1]
    whole.extra = {}
    with pytest.raises(UserError, match="not a shard's mask file"):
        merge_mask_sets([("whole", whole)])


def test_merging_files_streams_them_in_chunks(tmp_path, monkeypatch):
    """The merged file is written chunk by chunk from the shard files (never all masks in memory): chunks of 2
    masks across shards of 2, 2 and 1 give the masks of one file, in order."""
    from opom import mask_store

    parts = [_part(2, 3, 4, 5, 5), _part(0, 3, 0, 2, 5), _part(1, 3, 2, 4, 5)]
    for name, ms in parts:
        save_masks(tmp_path / name / "masks.safetensors", ms)
    monkeypatch.setattr(mask_store, "CHUNK_BYTES", 2 * 3 * 4 * 4 * 4)
    described = merge_mask_files([tmp_path], tmp_path / "merged.safetensors")
    assert described.masks.device.type == "meta" and described.identities == [f"p{i}" for i in range(5)]
    merged = load_masks(tmp_path / "merged.safetensors")
    assert merged.identities == [f"p{i}" for i in range(5)]
    assert torch.equal(merged.masks, torch.arange(5.0).view(-1, 1, 1, 1).expand(-1, 3, 4, 4))
    assert merged.extra["config"]["shard"]["count"] == 1 and len(merged.extra["merged_from"]) == 3


def test_merge_cli_reads_folders_and_reports_errors_in_one_line(tmp_path):
    for index, start, stop in ((0, 0, 2), (1, 2, 5)):
        save_masks(tmp_path / f"job{index}" / "masks.safetensors", _part(index, 2, start, stop, 5)[1])
    out = tmp_path / "merged.safetensors"
    cli = [sys.executable, "-c", "import sys; from opom.shards import main; sys.exit(main())"]
    done = subprocess.run([*cli, str(out), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert load_masks(out).identities == [f"p{i}" for i in range(5)]
    (tmp_path / "job1" / "masks.safetensors").unlink()
    done = subprocess.run([*cli, str(tmp_path / "again.safetensors"), str(tmp_path / "job0")], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "error: missing shard 1 of 2" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "again.safetensors").exists()


def _run_in_process(overrides, out):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("run", overrides=[*overrides, f"paths.output_dir={out}"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return run(cfg)


def test_random_noise_shards_equal_the_whole_job(tiny_overrides, tmp_path):
    overrides = [*tiny_overrides, *SHARDED, "method=random_noise"]
    _run_in_process(overrides, tmp_path / "whole")
    for index in range(2):
        results = _run_in_process([*overrides, "shard.count=2", f"shard.index={index}"], tmp_path / f"s{index}")
        assert results["models"] == {} and results["shard"]["index"] == index
    merge_mask_files([tmp_path / "s0", tmp_path / "s1"], tmp_path / "merged.safetensors")
    merged, whole = load_masks(tmp_path / "merged.safetensors"), load_masks(tmp_path / "whole" / "masks.safetensors")
    assert merged.identities == whole.identities and torch.equal(merged.masks, whole.masks)


def test_masks_kept_on_disk_equal_masks_kept_in_memory(tiny_overrides, tmp_path):
    """crafting.mask_store=disk (one batch in memory, the rest in a scratch file): the same mask file and results,
    and no scratch file left in the output folder."""
    overrides = [*tiny_overrides, *SHARDED, *HULL]
    memory = _run_in_process([*overrides, "crafting.mask_store=memory"], tmp_path / "memory")
    disk = _run_in_process([*overrides, "crafting.mask_store=disk"], tmp_path / "disk")
    a, b = load_masks(tmp_path / "memory" / "masks.safetensors"), load_masks(tmp_path / "disk" / "masks.safetensors")
    assert a.masks.abs().max() > 0 and torch.equal(a.masks, b.masks) and a.identities == b.identities
    assert memory["models"] == disk["models"]
    assert not [p.name for p in (tmp_path / "disk").iterdir() if p.name.startswith(".masks-")]


def test_two_processes_craft_the_masks_of_one(tiny_overrides, tmp_path):
    """FIM and DFANet+MI, each as one in-process job and as 2 shards in 2 joblib processes, merged at the end."""
    attacks = ["fim", "dfanet_mi"]
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, str(ROOT / "run.py"), "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
           f"hydra.sweep.dir={sweep}", "shard.count=2", "shard.index=0,1", f"attack={','.join(attacks)}",
           *tiny_overrides, *SHARDED, *HULL]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for attack in attacks:
        _run_in_process([*tiny_overrides, *SHARDED, *HULL, f"attack={attack}"], tmp_path / attack)
        whole = load_masks(tmp_path / attack / "masks.safetensors")
        merged = load_masks(sweep / f"merged-convex_hull-{attack}-arcface-eps8" / "masks.safetensors")
        assert merged.identities == whole.identities and len(whole.identities) == 5
        assert whole.masks.abs().max() > 0
        assert torch.equal(merged.masks, whole.masks), (attack, (merged.masks - whole.masks).abs().max())
        assert merged.extra["config"]["shard"] == whole.extra["config"]["shard"]
        assert len(merged.extra["merged_from"]) == 2


@pytest.mark.slow
def test_submitit_jobs_craft_the_masks_of_one(tiny_overrides, tmp_path):
    """The SLURM path run locally: Hydra's submitit launcher (``hydra/launcher=submitit_local``, the same
    submitit job arrays as ``experiment=scale_slurm`` without the SLURM queue) runs 2 shards x 2 attacks as 4
    submitit jobs; the masks merged at the end of the sweep equal one in-process job's, bit for bit."""
    attacks = ["fim", "dfanet_mi"]
    whole = {}
    for attack in attacks:  # first: this also trains the tiny models the jobs then find in the cache
        _run_in_process([*tiny_overrides, *SHARDED, *HULL, f"attack={attack}"], tmp_path / attack)
        whole[attack] = load_masks(tmp_path / attack / "masks.safetensors")
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, str(ROOT / "run.py"), "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=20",
           f"hydra.sweep.dir={sweep}", "shard.count=2", "shard.index=0,1", f"attack={','.join(attacks)}",
           *tiny_overrides, *SHARDED, *HULL]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Submitit 'local' sweep output dir" in done.stdout + done.stderr
    assert len(list((sweep / ".submitit").glob("*/*_log.out"))) == 4  # four submitit jobs ran
    for attack in attacks:
        merged = load_masks(sweep / f"merged-convex_hull-{attack}-arcface-eps8" / "masks.safetensors")
        assert merged.identities == whole[attack].identities and len(merged.identities) == 5
        assert whole[attack].masks.abs().max() > 0
        difference = (merged.masks - whole[attack].masks).abs().max()
        assert torch.equal(merged.masks, whole[attack].masks), (attack, difference)
        assert len(merged.extra["merged_from"]) == 2
