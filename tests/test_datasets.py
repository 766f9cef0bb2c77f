"""Every real-dataset layout, on a small tree the test writes in that layout."""

import pytest
import torch
from torchvision.io import decode_image, write_jpeg, write_png

from opom.data.datasets import FolderFacesProtection, OpomLists, read_list
from opom.data.gallery import materialize
from opom.data.synthetic import render_images
from opom.errors import DatasetError


@pytest.fixture(scope="module")
def faces():
    return render_images([i // 4 for i in range(16)], [i % 4 for i in range(16)], seed=0)  # 4 people x 4


def _write(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(image, str(path))


def test_folder_layout_keeps_order_names_and_split(tmp_path, faces):
    for i, image in enumerate(faces):
        _write(tmp_path / "people" / f"p{3 - i // 4}" / f"{i % 4:02d}.png", image)
    for i in range(3):
        _write(tmp_path / "dis" / "sub" / f"d{i}.png", faces[i])
    prot = FolderFacesProtection(str(tmp_path / "people"), mask_images=2, test_images=2,
                                 distractor_root=str(tmp_path / "dis"), distractors=2).protection_set()
    assert prot.names == ["p0", "p1", "p2", "p3"]  # sorted
    assert prot.mask_images.shape == (4, 2, 3, 112, 112) and materialize(prot.distractors).shape == (2, 3, 112, 112)
    assert torch.equal(prot.mask_images[0, 0], faces[12])  # p0 holds images 12..15
    assert torch.equal(prot.test_images[0, 1], faces[15])


def test_folder_resizes_other_sizes_and_reports_short_identities(tmp_path, faces):
    big = torch.nn.functional.interpolate(faces[:3].float(), size=(224, 224)).to(torch.uint8)
    (tmp_path / "p" / "a").mkdir(parents=True)
    for i, image in enumerate(big):
        write_jpeg(image, str(tmp_path / "p" / "a" / f"{i}.jpg"))
    prot = FolderFacesProtection(str(tmp_path / "p"), mask_images=1, test_images=2).protection_set()
    assert prot.test_images.shape == (1, 2, 3, 112, 112)
    with pytest.raises(DatasetError, match="'a' has 3"):
        FolderFacesProtection(str(tmp_path / "p"), mask_images=2, test_images=2).protection_set()


def _opom_tree(tmp_path, faces, per_test=2):
    data = tmp_path / "data"
    train_lines, test_lines = [], []
    for person in range(4):
        for j in range(4):
            rel = f"celeb_{person}/{j}.png"
            _write(data / rel, faces[person * 4 + j])
            (train_lines if j < 2 else test_lines).append(rel)
    (tmp_path / "train.lst").write_text("\n".join(train_lines) + "\n")
    (tmp_path / "test.lst").write_text("\n".join(test_lines) + "\n")
    return data


def test_opom_lists_with_megaface_and_lfw_distractors(tmp_path, faces):
    data = _opom_tree(tmp_path, faces)
    mega = tmp_path / "mega"
    _write(mega / "1" / "a.png", faces[0])
    _write(mega / "2" / "b.png", faces[1])
    (tmp_path / "mega.lst").write_text("0 1/a.png\n1 2/b.png\n")
    prot = OpomLists(str(data), str(tmp_path / "train.lst"), str(tmp_path / "test.lst"), mask_images=2,
                     test_images=2, distractor_list=str(tmp_path / "mega.lst"), distractor_dir=str(mega),
                     distractor_format="megaface", distractors=1).protection_set()
    assert prot.names == ["celeb_0", "celeb_1", "celeb_2", "celeb_3"]  # list order, not sorted
    assert torch.equal(prot.mask_images[1, 1], faces[5]) and torch.equal(prot.test_images[3, 0], faces[14])
    assert len(prot.distractors) == 1 and torch.equal(materialize(prot.distractors)[0], faces[0])

    (tmp_path / "lfw.lst").write_text("1/a.png\n2/b.png\n")
    lfw = OpomLists(str(data), str(tmp_path / "train.lst"), str(tmp_path / "test.lst"), mask_images=2, test_images=2,
                    distractor_list=str(tmp_path / "lfw.lst"), distractor_dir=str(mega),
                    distractor_format="lfw").protection_set()
    assert len(lfw.distractors) == 2


def test_list_errors_name_the_fix(tmp_path, faces):
    data = _opom_tree(tmp_path, faces)
    with pytest.raises(DatasetError, match="not a multiple of 3"):
        OpomLists(str(data), str(tmp_path / "train.lst"), str(tmp_path / "test.lst"), mask_images=3,
                  test_images=2).protection_set()
    (tmp_path / "bad.lst").write_text("celeb_0/0.png\nceleb_0/missing.png\n")
    with pytest.raises(DatasetError, match="missing.png.*listed but missing"):
        OpomLists(str(data), str(tmp_path / "bad.lst"), str(tmp_path / "bad.lst"), mask_images=2,
                  test_images=2).protection_set()
    with pytest.raises(DatasetError, match="does not exist"):
        read_list(tmp_path / "nope.lst")
    (tmp_path / "m.lst").write_text("just-one-token\n")
    with pytest.raises(DatasetError, match="2nd token"):
        read_list(tmp_path / "m.lst", "megaface")


def test_written_images_round_trip(tmp_path, faces):
    _write(tmp_path / "x.png", faces[0])
    assert torch.equal(decode_image(str(tmp_path / "x.png")), faces[0])


def test_main_job_runs_on_a_folder_dataset_with_given_weights(tmp_path, faces):
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from safetensors.torch import save_file
    from test_e2e import ROOT

    from opom.models.zoo import ZOO
    from opom.pipeline import run

    for i, image in enumerate(faces):
        _write(tmp_path / "people" / f"p{i // 4}" / f"{i % 4}.png", image)
    save_file(ZOO["small_resnet"].make(128).state_dict(), tmp_path / "w.safetensors")
    weights = str(tmp_path / "w.safetensors")
    overrides = ["dataset=folder", f"dataset.root={tmp_path / 'people'}", "dataset.mask_images=2",
                 "dataset.test_images=2", f"dataset.distractor_root={tmp_path / 'people'}", "dataset.distractors=3",
                 f"surrogate.arcface.checkpoint={weights}", "blackbox=[resnet_cosface]",
                 f"blackbox.resnet_cosface.checkpoint={weights}",
                 "attack.iterations=2", "trainer.enable_progress_bar=false", f"paths.output_dir={tmp_path / 'out'}"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("run", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    results = run(cfg)
    assert set(results["models"]) == {"arcface", "resnet_cosface"}
    assert (tmp_path / "out" / "masks.safetensors").exists()
