import numpy as np
import pytest
import torch

from opom.data.gallery import materialize
from opom.data.synthetic import SyntheticFaces, render_images
from opom.errors import DatasetError


def test_an_identity_renders_the_same_whatever_the_batch():
    a = render_images([3, 7, 3], [0, 1, 2], seed=0)
    b = render_images([3], [2], seed=0)
    assert a.dtype == torch.uint8 and a.shape == (3, 3, 112, 112)
    assert torch.equal(a[2], b[0])


def test_images_of_a_person_differ_and_people_differ():
    x = render_images([1, 1, 2], [0, 1, 0], seed=0).float()
    within = (x[0] - x[1]).abs().mean()
    assert within > 1  # nuisance changes each photo
    assert (x[0] - x[2]).abs().mean() > within  # another person differs more


def test_pools_are_disjoint_and_split_as_asked(tmp_path):
    ds = SyntheticFaces(identities=3, images_per_identity=5, mask_images=3, test_images=2, distractors=4,
                        train_identities=4, train_images=2, cache_dir=str(tmp_path))
    prot = ds.protection_set()
    assert prot.mask_images.shape == (3, 3, 3, 112, 112) and prot.test_images.shape == (3, 2, 3, 112, 112)
    distractors = materialize(prot.distractors)
    assert distractors.shape == (4, 3, 112, 112) and len(prot.distractors) == 4
    # streamed in any chunking, the gallery is the same people
    assert torch.equal(torch.cat(list(prot.distractors.chunks(3))), distractors)
    images, labels = ds.training_pool()
    assert images.shape[0] == 8 and labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    train_first = images[::2].flatten(1).float()
    for person in prot.mask_images[:, 0].flatten(1).float():
        assert (train_first - person).abs().mean(1).min() > 1
    again = SyntheticFaces(identities=3, images_per_identity=5, mask_images=3, test_images=2, distractors=4,
                           train_identities=4, train_images=2, cache_dir=str(tmp_path)).protection_set()
    assert torch.equal(again.test_images, prot.test_images)  # served from the cache, identical
    assert again.distractors.key == prot.distractors.key


def test_too_few_images_per_identity_is_a_clear_error(tmp_path):
    ds = SyntheticFaces(identities=2, images_per_identity=6, mask_images=5, test_images=3, distractors=2,
                        cache_dir=str(tmp_path))
    with pytest.raises(DatasetError, match=r"fewer than dataset.mask_images \+ dataset.test_images = 5 \+ 3 = 8"):
        ds.protection_set()


def test_nuisance_zero_gives_identical_photos_up_to_noise():
    x = render_images(np.array([5, 5]), np.array([0, 1]), seed=0, nuisance=0.0, noise=0.0)
    assert torch.equal(x[0], x[1])
