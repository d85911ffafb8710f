import pytest

from tiny_models import sample_text, save_tiny_vit, write_image_folder


@pytest.fixture(scope="session")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "sample.txt"
    path.write_text(sample_text(1500))
    return path


@pytest.fixture(scope="session")
def vit_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("vit")
    return save_tiny_vit(root / "model", num_labels=3), write_image_folder(root / "images", classes=3, per_class=5)
