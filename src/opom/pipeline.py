"""The main job: craft one mask per identity, save it, and test it against held-out face models.

``run(cfg)`` builds every part explicitly from the composed Hydra config and returns the results dict
(the same content as ``results.json``).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
import zipfile
from functools import partial
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from opom.data.alignment import Canvas
from opom.data.protection import ProtectionDataModule, ProtectionSet
from opom.errors import ConfigError, UserError
from opom.evaluation.callbacks import MaskWriter, TransferEvaluation, WandbReport
from opom.evaluation.holdout import HoldoutEvaluation
from opom.evaluation.provenance import data_used, environment
from opom.evaluation.robustness import parse_transform
from opom.logs import quiet_lightning
from opom.mask_store import choose_mask_store
from opom.masks import MaskSet, load_masks
from opom.methods import METHODS
from opom.models.training import prepare_models
from opom.models.zoo import ZOO, build_face_model, model_key, preflight
from opom.module import MaskCrafter, transfer_options
from opom.refine import RefineSettings, refine
from opom.shards import Shard, shard_trainer

log = logging.getLogger("opom")


def validate(cfg: DictConfig) -> None:
    """Fail fast, before anything heavy, on settings that cannot work. Reads no data and builds no model, so
    ``run.py`` runs it on the composed config before Hydra creates the job's folder."""
    target = cfg.method.get("_target_", "")
    if not target.startswith("opom.methods.") or target.rsplit(".", 1)[-1] not in {
            type_.__name__ for type_ in METHODS.values()}:
        raise ConfigError(f"unknown method target {target!r}; use method=<{'|'.join(METHODS)}>")
    check_attack(cfg.attack)
    instantiate(cfg.attack)  # the attack's own checks (dropout, normalizer, ...)
    if not cfg.get("blackbox"):
        raise ConfigError("the black-box panel is empty: choose models, e.g. 'blackbox=[resnet_cosface]'")
    if _number(cfg.identities_per_batch, "identities_per_batch", int) < 1:
        raise ConfigError(f"identities_per_batch must be >= 1, got {cfg.identities_per_batch}")
    face_images_setting(cfg)
    check_evaluation(cfg.evaluation)
    sur_specs, _ = _specs(cfg)
    for spec in sur_specs.values():
        if not ZOO[spec["arch"]].differentiable:
            raise ConfigError(f"surrogate {spec['name']!r} is a black box (no gradients): it can only be evaluated, "
                              f"e.g. 'blackbox=[{spec['name']}]'; pick a differentiable surrogate")
    OmegaConf.to_container(cfg.dataset, resolve=True, throw_on_missing=True)  # paths the user must give (???)


def _number(value, key: str, kind=float):
    """``value`` as a number of ``kind``, or a :class:`ConfigError` naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
        raise ConfigError(f"{key} must be {'a whole number' if kind is int else 'a number'}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key} must be finite, got {value!r}")
    return kind(value)


def check_attack(attack: DictConfig) -> None:
    """The budget, step and iterations of an attack config: numbers in range. eps and step are grey levels."""
    eps = _number(attack.get("eps"), "attack.eps")
    if not 1 <= eps <= 255:
        hint = (f"; in image units [0, 1] {eps} would be attack.eps={eps * 255:g}" if 0 < eps < 1 else "")
        raise ConfigError(f"attack.eps is the L-inf budget in grey levels and must be in [1, 255] (the paper uses "
                          f"8), got {eps:g}{hint}")
    if _number(attack.get("step"), "attack.step") <= 0:
        raise ConfigError(f"attack.step must be > 0 (grey levels, e.g. attack.step=1), got {attack.step}")
    if _number(attack.get("iterations"), "attack.iterations", int) < 1:
        raise ConfigError(f"attack.iterations must be >= 1, got {attack.iterations}")


def check_evaluation(evaluation: DictConfig) -> None:
    """Rank cut-offs, transform names and the clean-accuracy floor of an ``evaluation`` block."""
    ks = list(evaluation.get("ks") or [])
    if not ks or any(_number(k, "evaluation.ks", int) < 1 for k in ks):
        raise ConfigError(f"evaluation.ks must list ranks >= 1, e.g. 'evaluation.ks=[1,5,10]', got {ks}")
    for name in evaluation.get("robustness") or []:
        parse_transform(name)
    floor = _number(evaluation.get("min_clean_top1", 0.5), "evaluation.min_clean_top1")
    if not 0 <= floor <= 1:
        raise ConfigError(f"evaluation.min_clean_top1 must be in [0, 1], got {floor:g}")
    for key in ("batch_size", "chunk"):
        if _number(evaluation.get(key), f"evaluation.{key}", int) < 1:
            raise ConfigError(f"evaluation.{key} must be >= 1, got {evaluation.get(key)}")


def check_weights_file(spec: dict, key: str) -> None:
    """A weights file given as ``checkpoint`` must be readable as what it claims to be (safetensors header, torch
    archive); found out here rather than deep inside model building. Folders and other formats (ONNX, dlib's
    folder) are left to the model's own loader."""
    checkpoint = spec.get("checkpoint")
    path = Path(str(checkpoint)).expanduser() if checkpoint else None
    if path is None or not path.is_file():
        return
    with open(path, "rb") as f:
        head = f.read(9)
    fix = f"give {key}.checkpoint= a state dict saved with safetensors or torch.save(model.state_dict(), path)"
    if path.suffix == ".safetensors" or head[8:9] == b"{":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                f.keys()
        except Exception as err:  # noqa: BLE001 - any failure to read the user's file is the file's problem
            raise UserError(f"weights of {key!r}: {str(path)!r} is not a readable safetensors file ({err}); "
                            f"{fix}") from err
    elif path.suffix in (".pth", ".pt", ".ckpt", ".bin") and not (zipfile.is_zipfile(path) or head[:1] == b"\x80"):
        raise UserError(f"weights of {key!r}: {str(path)!r} is not a torch checkpoint (neither a torch.save "
                        f"archive nor a pickle); {fix}")


def plain_config(cfg: DictConfig) -> dict:
    """The job's resolved config as plain containers, without Hydra's own node."""
    return {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
            for k in cfg if k != "hydra"}


def face_images_setting(cfg: DictConfig):
    setting = cfg.get("privacy", {}).get("face_images", "auto")
    if setting not in (True, False, "auto"):
        raise ConfigError(f"privacy.face_images must be true, false or auto, got {setting!r}")
    return setting


def face_images_allowed(cfg: DictConfig, dataset) -> bool:
    """Whether figures of this job may show faces (local files): ``privacy.face_images`` true, or ``auto`` and
    the dataset has no real people (the synthetic world)."""
    setting = face_images_setting(cfg)
    return setting is True or (setting == "auto" and not getattr(dataset, "real_people", True))


def surrogate_specs(cfg: DictConfig) -> dict[str, dict]:
    """``{key: spec}`` of the surrogate(s): ``surrogate=sface`` selects one, ``'surrogate=[sface,faceapi]'`` an
    ensemble (mask files of older versions stored one flat spec: read as one surrogate)."""
    node = OmegaConf.to_container(cfg.surrogate, resolve=True) if cfg.get("surrogate") else {}
    if "arch" in node:
        return {node["name"]: node}
    if not node:
        raise ConfigError("no surrogate: choose one or more, e.g. surrogate=sface or 'surrogate=[sface,faceapi]'")
    return node


def surrogate_name(specs: dict[str, dict]) -> str:
    """How results and mask files name the surrogate(s): ``sface``, or ``sface+faceapi`` for an ensemble."""
    return "+".join(spec["name"] for spec in specs.values())


def _specs(cfg: DictConfig, surrogate: bool = True) -> tuple[dict[str, dict], dict[str, dict]]:
    """The surrogates' (unless ``surrogate`` is false) and the black-box panel's model specs, checked before
    any data is read."""
    sur_specs = surrogate_specs(cfg) if surrogate else {}
    panel_specs = {name: OmegaConf.to_container(spec, resolve=True) for name, spec in cfg.blackbox.items()}
    for key, spec in sur_specs.items():
        preflight(spec, f"surrogate.{key}")  # weights problems surface before any data is read
        check_weights_file(spec, f"surrogate.{key}")
    for name, spec in panel_specs.items():
        preflight(spec, f"blackbox.{name}")
        check_weights_file(spec, f"blackbox.{name}")
    return sur_specs, panel_specs


def _models(cfg: DictConfig, dataset, sur_specs: dict[str, dict], panel_specs: dict[str, dict], canvas=None):
    """Trains what needs training (in parallel), then returns the surrogates' builders, the panel's builders and
    every model's cache key. Models read ``canvas`` images (the dataset's)."""
    fr_train = OmegaConf.to_container(cfg.fr_train, resolve=True)
    build = partial(build_face_model, dataset=dataset, fr_train=fr_train, cache_dir=cfg.paths.cache_dir, log=log.info,
                    canvas=canvas)
    specs = {name: spec for name, spec in panel_specs.items()}
    for spec in sur_specs.values():
        specs[spec["name"]] = spec
    prepare_models(list(specs.values()), dataset, fr_train, cfg.paths.cache_dir, log=log.info)
    keys = {name: model_key(spec, dataset, fr_train) for name, spec in specs.items()}
    surrogates = {spec["name"]: partial(build, spec) for spec in sur_specs.values()}
    return surrogates, {name: partial(build, spec) for name, spec in panel_specs.items()}, keys


def build_surrogates(builders: dict) -> list:
    """Build the surrogates; a black box (no gradients) among them is a one-line error."""
    models = []
    for name, build in builders.items():
        model = build()
        if not model.differentiable:
            raise ConfigError(f"surrogate {name!r} is a black box (no gradients): it can only be evaluated, e.g. "
                              f"'blackbox=[{name}]'; pick a differentiable surrogate")
        models.append(model)
    return models


def transfer_evaluation(cfg: DictConfig, panel: dict, keys: dict, run_info: dict) -> TransferEvaluation:
    settings = OmegaConf.to_container(cfg.evaluation, resolve=True)
    cache_dir = cfg.paths.cache_dir if settings.pop("cache_embeddings", True) else None
    return TransferEvaluation(panel, cfg.paths.output_dir, run_info, cache_dir=cache_dir, model_keys=keys, **settings)


def run(cfg: DictConfig) -> dict:
    validate(cfg)
    quiet_lightning()
    L.seed_everything(cfg.seed, verbose=False)
    out = Path(cfg.paths.output_dir)

    method = instantiate(cfg.method)
    attack = instantiate(cfg.attack)
    sur_specs, panel_specs = _specs(cfg)
    dataset = instantiate(cfg.dataset)
    if getattr(dataset, "protocol", None) == "holdout":
        return run_holdout(cfg, dataset, method, attack, sur_specs, panel_specs)
    shard = Shard.from_config(cfg.get("shard"))
    protection, shard_info = shard.select(dataset.protection_set(), cfg.identities_per_batch)
    if shard.count > 1:  # a shard only crafts; its masks are tested once merged (opom-merge-masks, evaluate.py)
        panel_specs = {}
    surrogate_builders, panel, keys = _models(cfg, dataset, sur_specs, panel_specs, canvas=protection.canvas)
    surrogates = build_surrogates(surrogate_builders)

    run_info = {"method": method.name, "attack": attack.name, "surrogate": surrogate_name(sur_specs),
                "eps": attack.eps_levels, **job_info(None, cfg.dataset, protection, attack, method.crafts),
                "config": {**plain_config(cfg), "shard": shard_info}}
    evaluation = transfer_evaluation(cfg, panel, keys, run_info)
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    faces = face_images_allowed(cfg, dataset)
    callbacks = [MaskWriter(out, run_info, examples=faces)] + ([evaluation] if shard.count == 1 else [])
    if isinstance(logger, WandbLogger) and shard.count == 1:  # faces reach wandb only when the user said so
        callbacks.append(WandbReport(evaluation, out, face_images=cfg.privacy.face_images is True))
    callbacks += [instantiate(c) for c in (cfg.get("extra_callbacks") or {}).values()]

    store = choose_mask_store(_mask_store_choice(cfg), out, protection.num_identities, protection.image_size)
    module = MaskCrafter(surrogates, method, attack, protection.num_identities, protection.image_size,
                         **crafter_options(cfg, protection.canvas, attack.seed), mask_store=store)
    iterations = attack.iterations if method.crafts else 1
    datamodule = ProtectionDataModule(protection, cfg.identities_per_batch, iterations, shard_info["start"])
    trainer = L.Trainer(**shard_trainer(cfg.trainer, shard), max_epochs=1, logger=logger, callbacks=callbacks,
                        enable_checkpointing=False)
    log.info("crafting %d masks: %s, %s, surrogate %s -> %s", protection.num_identities, method, attack,
             run_info["surrogate"], out)
    if shard.count > 1:
        log.info("shard %d of %d: people %d..%d of %d", shard.index, shard.count, shard_info["start"],
                 shard_info["stop"] - 1, shard_info["total"])
    trainer.fit(module, datamodule=datamodule)
    if isinstance(logger, WandbLogger):
        logger.experiment.finish()  # one wandb run per job, also inside a multirun
    if shard.count > 1:
        return {**{k: v for k, v in run_info.items() if k != "config"}, "shard": shard_info, "models": {}}
    return evaluation.results


def _hydra_job() -> tuple[str | None, list[str]]:
    """This job's dataset choice and its command-line overrides, when Hydra runs it."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None, []
    hydra = HydraConfig.get()
    return hydra.runtime.choices.get("dataset"), list(hydra.overrides.task)


def job_info(dataset_name: str | None, dataset_cfg, protection: ProtectionSet | None, attack=None,
             crafts: bool = True) -> dict:
    """What ``results.json`` records about how a job was run, beside the config: the data, the attack's
    iterations and step, the job's overrides (what a sweep varied) and the machine."""
    name, overrides = _hydra_job()
    target = str(dataset_cfg.get("_target_", "")).rsplit(".", 1)[-1]
    info = {"dataset": data_used(dataset_name or name or target, protection)} if protection is not None else {}
    if attack is not None:
        info["iterations"] = attack.iterations if crafts else 0
        info["step"] = attack.step_levels
    info["overrides"] = overrides
    info["environment"] = environment()
    return info


def crafter_options(cfg: DictConfig, canvas: Canvas, seed: int) -> dict:
    """MaskCrafter's keyword options from ``crafting`` (speed options and the transfer extensions)."""
    c = OmegaConf.to_container(cfg.get("crafting") or OmegaConf.create({}), resolve=True)
    c.pop("mask_store", None)  # where the masks are kept: see _mask_store_choice
    extensions = {k: c.pop(k) for k in ("ensemble", "transforms", "transform_p", "transform_params", "region",
                                        "chroma", "texture") if k in c}
    return {**c, **transfer_options(canvas, seed=seed, **extensions)}


def _mask_store_choice(cfg: DictConfig) -> str:
    """``crafting.mask_store``: auto | memory | disk (:func:`opom.mask_store.choose_mask_store`)."""
    return str((cfg.get("crafting") or {}).get("mask_store", "auto"))


def options_label(cfg: DictConfig, attack_name: str = "fim") -> str:
    """The transfer extensions a job uses, in a few words ('' for the paper's crafting: FIM, nothing else)."""
    c, parts = cfg.get("crafting") or {}, [] if attack_name == "fim" else [attack_name]
    if c.get("ensemble", "distance") != "distance":
        parts.append(f"ensemble={c.ensemble}")
    if c.get("transforms"):
        parts.append("+".join(c.transforms))
    if c.get("region", "full") != "full":
        parts.append(f"region={c.region}")
    if c.get("chroma", 1.0) != 1.0:
        parts.append(f"chroma={c.chroma:g}")
    if c.get("texture", 0.0):
        parts.append(f"texture={c.texture:g}")
    return ", ".join(parts)


def run_holdout(cfg: DictConfig, dataset, method, attack, sur_specs: dict, panel_specs: dict) -> dict:
    """The main job on a held-out-photo benchmark (``dataset=real_photos``): one mask per fold (a person's
    enrolment photos), judged on the fold's held-out photo by the surrogates and the panel at their own thresholds
    (:mod:`opom.evaluation.holdout`)."""
    out = Path(cfg.paths.output_dir)
    if Shard.from_config(cfg.get("shard")).count > 1:
        raise ConfigError("identity shards are not available on the held-out-photo benchmark (it is small): "
                          "leave shard.count=1")
    if _mask_store_choice(cfg) == "disk":
        raise ConfigError("crafting.mask_store=disk is for large protection sets; the held-out-photo benchmark keeps "
                          "its masks in memory: leave crafting.mask_store=auto")
    data = dataset.holdout_set()
    builders, panel, _ = _models(cfg, dataset, sur_specs, panel_specs, canvas=data.canvas)
    surrogates = build_surrogates(builders)
    families = {spec["name"]: ZOO[spec["arch"]].family for spec in [*sur_specs.values(), *panel_specs.values()]}
    run_info = {"method": method.name, "attack": attack.name, "surrogate": surrogate_name(sur_specs),
                "eps": attack.eps_levels, "options": options_label(cfg, attack.name),
                **job_info(None, cfg.dataset, None, attack),
                "dataset": {"name": type(dataset).__name__, "photos": len(data.faces), "folds": len(data.folds)},
                "canvas": data.canvas.to_dict(), "config": plain_config(cfg)}
    evaluation = HoldoutEvaluation(panel, families, out, run_info)
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    options = crafter_options(cfg, data.canvas, attack.seed)
    module = MaskCrafter(surrogates, method, attack, data.num_identities, data.image_size, **options)
    iterations = attack.iterations if method.crafts else 1
    trainer_kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer = L.Trainer(**trainer_kwargs, max_epochs=1, logger=logger, enable_checkpointing=False,
                        callbacks=[MaskWriter(out, run_info), evaluation])
    log.info("crafting %d held-out-photo masks (%s photos): %s, %s, surrogates %s%s -> %s", data.num_identities,
             len(data.faces), method, attack, run_info["surrogate"],
             f" ({run_info['options']})" if run_info["options"] else "", out)
    trainer.fit(module, datamodule=ProtectionDataModule(data, cfg.identities_per_batch, iterations))
    if isinstance(logger, WandbLogger):
        logger.experiment.finish()
    settings = RefineSettings(**OmegaConf.to_container(cfg.get("refine") or OmegaConf.create({}), resolve=True))
    if settings.steps > 0:
        def make_crafter(refine_attack, n, init):
            return MaskCrafter(surrogates, copy.deepcopy(method), refine_attack, n, data.image_size,
                               **{**options, "init_masks": init})

        start = time.perf_counter()
        references = [data.images[list(f.enrol)] for f in data.folds]
        refined, eps_used = refine(make_crafter, surrogates, data.probes, module.masks.detach().cpu(), references,
                                   settings, attack.eps_levels, data.canvas.face_box(), trainer_kwargs)
        evaluation.evaluate_refined({m.name: m for m in surrogates}, data, refined, eps_used,
                                    time.perf_counter() - start, dataclasses.asdict(settings))
    return evaluation.results


def _people_with_masks(protection: ProtectionSet, masks: MaskSet) -> tuple[ProtectionSet, torch.Tensor]:
    """The people of ``protection`` that ``masks`` has a mask for, and their masks in the same order."""
    have = set(masks.identities)
    keep = [i for i, name in enumerate(protection.names) if name in have]
    if not keep:
        raise UserError(f"none of the dataset's {protection.num_identities} people has a mask in this file "
                        f"(it has {len(masks.identities)}, e.g. {masks.identities[:3]}); test on the dataset the "
                        f"masks were crafted for (leave dataset= unset)")
    if len(keep) < protection.num_identities:
        log.info("testing the %d of %d people that have a mask in this file", len(keep), protection.num_identities)
    idx = torch.as_tensor(keep)
    subset = ProtectionSet([protection.names[i] for i in keep], protection.mask_images[idx],
                           protection.test_images[idx], protection.distractors, protection.canvas)
    return subset, torch.stack([masks.mask_for(name) for name in subset.names])


def read_masks(path: str) -> MaskSet:
    """The mask file ``path``, or one line saying why it cannot be read."""
    try:
        return load_masks(path)
    except (UserError, FileNotFoundError):
        raise
    except Exception as err:  # noqa: BLE001 - a damaged or foreign file is the user's input, not a bug
        raise UserError(f"{str(path)!r} is not a readable opom mask file ({type(err).__name__}: {err}); give the "
                        f"masks.safetensors that run.py wrote in its output folder") from err


def saved_job(cfg: DictConfig) -> tuple[MaskSet, DictConfig]:
    """``evaluate.py``: the mask file and the job to test it with — the crafting run's config from the file's
    metadata, with this command's panel, dataset, evaluation settings and folders."""
    if OmegaConf.is_missing(cfg, "masks"):
        raise UserError("which masks? give masks=path/to/masks.safetensors (written by run.py in its output folder)")
    masks = read_masks(cfg.masks)
    saved = masks.extra.get("config")
    if not saved:
        raise UserError(f"{cfg.masks!r} has no crafting config in its metadata (it was not written by run.py); "
                        f"evaluate it with opom.evaluation.transfer.evaluate_model from Python instead")
    job = OmegaConf.create(saved)
    job.paths = cfg.paths  # this machine's cache and this job's output folder
    if cfg.get("blackbox"):
        job.blackbox = cfg.blackbox
    if cfg.get("dataset"):
        job.dataset = cfg.dataset
    job.evaluation = cfg.evaluation
    return masks, job


def validate_saved(cfg: DictConfig) -> tuple[MaskSet, DictConfig]:
    """``evaluate.py``'s check before anything heavy (and before Hydra creates the job's folder); returns the
    masks and the job (:func:`saved_job`)."""
    masks, job = saved_job(cfg)
    if not job.get("blackbox"):
        raise ConfigError("the black-box panel is empty: choose models, e.g. 'blackbox=[resnet_cosface]'")
    check_evaluation(job.evaluation)
    _specs(job, surrogate=cfg.whitebox)
    OmegaConf.to_container(job.dataset, resolve=True, throw_on_missing=True)
    return masks, job


def evaluate_saved(cfg: DictConfig) -> dict:
    """``evaluate.py``: re-test a saved mask file against a panel, reading the rest from its metadata."""
    quiet_lightning()
    masks, job = validate_saved(cfg)
    sur_specs, panel_specs = _specs(job, surrogate=cfg.whitebox)
    dataset = instantiate(job.dataset)
    protection, mask_tensor = _people_with_masks(dataset.protection_set(), masks)
    if masks.image_size != protection.image_size:
        raise UserError(f"the masks are {masks.image_size}x{masks.image_size} but the dataset's faces are "
                        f"{protection.image_size}x{protection.image_size}")
    surrogate_builders, panel, keys = _models(job, dataset, sur_specs, panel_specs, canvas=protection.canvas)
    saved_name = (masks.extra.get("dataset") or {}).get("name") if not cfg.get("dataset") else None
    crafted = job_info(saved_name, job.dataset, protection, instantiate(job.attack), instantiate(job.method).crafts)
    run_info = {"method": masks.method, "attack": masks.attack, "surrogate": masks.surrogate, "eps": masks.eps,
                "masks": str(Path(cfg.masks).resolve()), **crafted}
    evaluation = transfer_evaluation(job, panel, keys, run_info)
    surrogates = {name: build() for name, build in surrogate_builders.items()} if cfg.whitebox else {}
    log.info("re-testing %d masks from %s -> %s", len(mask_tensor), cfg.masks, cfg.paths.output_dir)
    return evaluation.evaluate({n: m for n, m in surrogates.items() if m.differentiable}, protection, mask_tensor)
