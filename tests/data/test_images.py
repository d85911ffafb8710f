"""``load_images``: an image folder and its ``limit``."""
import pytest

from tiny_models import write_image_folder


def test_limit_samples_every_class_not_the_first_ones(tmp_path):
    """An image folder lists its rows class by class: ``limit`` took the first classes only (ImageNet-val with
    --limit 10000 would have been 200 of 1000 classes). It is a seeded sample, in the data's order."""
    pytest.importorskip("datasets")
    from distr_patch.data.images import load_images

    folder = write_image_folder(tmp_path / "imgs", classes=4, per_class=6)
    full = load_images(str(folder))
    some = load_images(str(folder), limit=12)
    assert len(full) == 24 and len(some) == 12
    assert set(some["label"]) == {0, 1, 2, 3}
    assert some["label"] == sorted(some["label"])  # the data's order kept
    assert load_images(str(folder), limit=12)["label"] == some["label"]  # the same sample each call
    assert len(load_images(str(folder), limit=100)) == 24
