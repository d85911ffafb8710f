"""``run_vit`` on a tiny ViT and an imagefolder: top-k vs a hand computation, G=1 vs exact, fidelity."""
import json

import pytest
import torch

from distr_patch.data import load_images
from distr_patch.eval.config import RunConfig
from distr_patch.eval.vision import run_vit
from distr_patch.models import load_model
from tiny_models import save_tiny_vit, write_image_folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("vit")
    return save_tiny_vit(root / "model"), write_image_folder(root / "images")


def _run(setup, tmp_path, **changes):
    model_dir, images = setup
    cfg = RunConfig.merge(flags=dict(model=str(model_dir), data=str(images), group_sizes=[1, 2], settings=["paper"],
                                     distr={"block_m": 32}, batch_size=5, output_dir=str(tmp_path), run_name="r",
                                     device="cpu", plots=False, **changes))
    out = run_vit(cfg, progress=False)
    return json.loads(out.result.path.read_text())


def test_topk_equals_hand_computation_and_g1_matches(setup, tmp_path):
    data = _run(setup, tmp_path)
    model_dir, images = setup
    loaded = load_model(str(model_dir), "vit")
    ds = load_images(str(images))
    pixels = loaded.processor(images=[im.convert("RGB") for im in ds["image"]], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        ranked = loaded.model(pixel_values=pixels).logits.topk(5, -1).indices
    labels = torch.tensor(ds["label"])
    exact = data["variants"][0]["metrics"]
    assert exact["top1"]["value"] == pytest.approx((ranked[:, 0] == labels).float().mean().item())
    assert exact["top5"]["value"] == pytest.approx((ranked == labels[:, None]).any(-1).float().mean().item())
    g1 = data["variants"][1]["metrics"]
    assert g1["top1"]["diff"] == 0 and g1["top5"]["diff"] == 0
    assert data["datasets"]["images"]["num_examples"] == 12


def test_fidelity_is_one_for_g1_and_below_for_g2(setup, tmp_path):
    data = _run(setup, tmp_path, vit_metric="fidelity")
    cos = {v["name"]: v["metrics"]["cosine"]["value"] for v in data["variants"]}
    assert cos["exact"] == pytest.approx(1.0) and cos["G1"] == pytest.approx(1.0, abs=1e-5)
    assert cos["G2"] < 1 - 1e-6


def test_fidelity_of_a_folder_of_photos_needs_no_labels(setup, tmp_path):
    """--vit-metric fidelity on images in one folder (no class folders, no label column), as the README shows."""
    import shutil

    model_dir, images = setup
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, png in enumerate(sorted(images.rglob("*.png"))[:5]):
        shutil.copy(png, photos / f"{i}.png")
    data = _run((model_dir, photos), tmp_path / "out", vit_metric="fidelity")
    assert data["datasets"]["images"]["num_examples"] == 5
    assert data["variants"][1]["metrics"]["cosine"]["value"] == pytest.approx(1.0, abs=1e-5)


def test_fidelity_of_a_classifier_checkpoint_is_not_measured_through_a_random_pooler(setup, tmp_path):
    """A classifier checkpoint has no pooler weights: loaded as a backbone, its pooler would be random (and the
    cosine would change with --seed). It is dropped; the embedding is the CLS token, the same for every seed."""
    model_dir, images = setup
    loaded = load_model(str(model_dir), "backbone")
    assert loaded.model.pooler is None
    ds = load_images(str(images))
    pixels = loaded.processor(images=[im.convert("RGB") for im in ds["image"]], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = loaded.model(pixel_values=pixels)
    from distr_patch.eval.vision import pooled

    assert torch.equal(pooled(out), out.last_hidden_state[:, 0])
    cos = [_run(setup, tmp_path / str(seed), vit_metric="fidelity", seed=seed)["variants"][2]["metrics"]["cosine"]
           ["value"] for seed in (0, 1)]
    assert cos[0] == cos[1]


def test_a_backbone_checkpoint_keeps_its_trained_pooler(tmp_path):
    from transformers import ViTImageProcessor, ViTModel

    from tiny_models import tiny_vit

    backbone = ViTModel(tiny_vit(5).config)  # with a pooler, saved with its weights
    backbone.save_pretrained(tmp_path / "bb")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "bb")
    loaded = load_model(str(tmp_path / "bb"), "backbone")
    assert loaded.model.pooler is not None
    assert torch.equal(loaded.model.pooler.dense.weight, backbone.pooler.dense.weight)


def test_labels_that_would_score_against_the_wrong_classes_are_refused(setup, tmp_path):
    """A partial name match, more classes than the model, or an unlabelled image: each would be scored against
    the wrong classes (before: silently by index, and -1 indexed the last class)."""
    from types import SimpleNamespace

    import datasets

    from distr_patch.data.errors import DataError
    from distr_patch.eval.vision import label_mapping, model_labels

    model = SimpleNamespace(config=SimpleNamespace(label2id={"cat": 0, "dog": 1, "fox": 2}, num_labels=3))
    data = lambda *names: SimpleNamespace(features={"label": datasets.ClassLabel(names=list(names))})  # noqa: E731
    assert label_mapping(data("dog", "Cat"), "label", model) == ([1, 0], "by class name")
    assert label_mapping(data("a", "b"), "label", model) == (None, "label index = model class index")
    with pytest.raises(DataError, match=r"--label-column label: 2 of the data's 3 class names are labels of the model "
                                        r"and 1 are not \(e.g. 'zebra'\)"):
        label_mapping(data("cat", "dog", "zebra"), "label", model)
    with pytest.raises(DataError, match="the data has 4 classes, the model 3"):
        label_mapping(data("a", "b", "c", "d"), "label", model)
    assert model_labels([1, 0], [1, 0], "label", 3) == [0, 1]
    with pytest.raises(DataError, match=r"1 of the 3 images have no label \(-1\)"):
        model_labels([0, -1, 2], None, "label", 3)
    with pytest.raises(DataError, match="label 3 is past the model's 3 classes"):
        model_labels([0, 3], None, "label", 3)
    model_dir, images = setup  # end to end: the run stops before any variant, naming the flag
    partial = tmp_path / "partial"
    write_image_folder(partial, classes=2, per_class=2)
    (partial / "class0").rename(partial / "LABEL_0")
    with pytest.raises(DataError, match="1 of the data's 2 class names are labels of the model"):
        _run((model_dir, partial), tmp_path)
