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


def _folder(tmp_path):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(tmp_path / c / "rgb.png")
    return tmp_path


def test_images_of_every_mode_come_as_rgb_and_16_bit_is_scaled(tmp_path):
    """A 16-bit PNG (mode I;16) went through PIL's convert("RGB"), which clips every value above 255: a white
    image. Grayscale, palette, RGBA and CMYK images come as RGB; 16-bit ones keep their top 8 bits."""
    pytest.importorskip("datasets")
    import numpy as np
    from PIL import Image

    from distr_patch.data.images import load_images

    folder = _folder(tmp_path)
    g16 = np.full((8, 8), 0x8000, dtype=np.uint16)
    g16[0, 0] = 0x0100
    (folder / "deep").mkdir()  # a class of its own: label 1
    Image.fromarray(g16).save(folder / "deep" / "g16.png")
    rgb = Image.open(folder / "dog" / "rgb.png")
    rgb.convert("L").save(folder / "dog" / "gray.png")
    rgb.convert("RGBA").save(folder / "dog" / "rgba.png")
    rgb.convert("P").save(folder / "dog" / "pal.png")
    rgb.convert("CMYK").save(folder / "dog" / "cmyk.jpg")
    ds = load_images(str(folder))
    assert len(ds) == 7 and {im.mode for im in ds["image"]} == {"RGB"}
    [g] = [np.asarray(ds[i]["image"]) for i in range(len(ds)) if ds[i]["label"] == 1]
    assert g[1, 1].tolist() == [0x80] * 3 and g[0, 0].tolist() == [1] * 3
    assert [im.mode for im in ds.select([0, 1])["image"]] == ["RGB", "RGB"]  # also on a selection, and
    assert load_images(str(folder), limit=2)[0]["image"].mode == "RGB"  # with a limit


def test_an_unreadable_image_names_its_file(tmp_path):
    """A corrupt or truncated image raised PIL's error from inside the evaluation loop (a traceback, after the
    exact run's minutes); it is a DataError naming --data and the file."""
    pytest.importorskip("datasets")
    from distr_patch.data.errors import DataError
    from distr_patch.data.images import load_images

    folder = _folder(tmp_path)
    data = (folder / "dog" / "rgb.png").read_bytes()
    (folder / "dog" / "half.png").write_bytes(data[: len(data) // 2])
    (folder / "cat" / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
    ds = load_images(str(folder))
    with pytest.raises(DataError, match=r"--data: image .*junk.png cannot be read"):
        list(ds["image"])
    with pytest.raises(DataError, match=r"image .*half.png cannot be read"):
        list(ds.select([i for i, y in enumerate(ds["label"]) if y == 1])["image"])  # the dog folder


def test_class_folders_named_by_number_are_labelled_by_number(tmp_path):
    """imagefolder sorts class folders as text: with folders 0 ... 11, folder "10" got label 2 and "2" label 4, so
    the label index (the model's class index where the names do not match its labels) was not the folder's number."""
    pytest.importorskip("datasets")
    import numpy as np
    from PIL import Image

    from distr_patch.data.images import load_images

    for c in range(12):
        (tmp_path / str(c)).mkdir()
        Image.fromarray(np.full((4, 4, 3), c, np.uint8)).save(tmp_path / str(c) / "a.png")
    ds = load_images(str(tmp_path))
    assert ds.features["label"].names == [str(c) for c in range(12)]
    assert all(ds[i]["label"] == np.asarray(ds[i]["image"])[0, 0, 0] for i in range(12))  # the pixel: its folder
    some = load_images(str(tmp_path), limit=5)
    assert all(some[i]["label"] == np.asarray(some[i]["image"])[0, 0, 0] for i in range(5))


def test_a_file_listing_image_paths_and_class_names(tmp_path):
    """A JSONL of image paths (relative to it) and a parquet of images with class names as text: the paths were
    passed on as strings (an AttributeError in the forward) and text labels compared with ints (a TypeError)."""
    pytest.importorskip("datasets")
    import json

    import datasets

    from distr_patch.data.errors import DataError
    from distr_patch.data.images import load_images

    folder = write_image_folder(tmp_path / "imgs", classes=2, per_class=2)
    files = sorted(p.relative_to(tmp_path) for p in folder.rglob("*.png"))
    listing = tmp_path / "list.jsonl"
    listing.write_text("".join(json.dumps({"image": str(f), "label": f.parent.name}) + "\n" for f in files))
    ds = load_images(str(listing))
    assert ds[0]["image"].mode == "RGB" and ds[0]["image"].size == (40, 40)
    assert ds.features["label"].names == sorted({f.parent.name for f in files}) and set(ds["label"]) == {0, 1}
    listing.write_text(json.dumps({"image": "missing.png", "label": 0}) + "\n")
    with pytest.raises(DataError, match="image missing.png cannot be read"):
        load_images(str(listing))[0]
    listing.write_text(json.dumps({"image": 3, "label": 0}) + "\n")
    with pytest.raises(DataError, match="--image-column image: holds .*int64.*, not images or image file paths"):
        load_images(str(listing))
    listing.write_text(json.dumps({"image": str(files[0]), "label": 0.5}) + "\n")
    with pytest.raises(DataError, match="--label-column label: holds .*float.*, expected class indices or class names"):
        load_images(str(listing))
    parquet = tmp_path / "rows.parquet"
    datasets.load_dataset("imagefolder", data_dir=str(folder), split="train").cast_column(
        "label", datasets.Value("int64")).map(lambda r: {"label": ["b", "a"][r["label"]]}).to_parquet(str(parquet))
    assert load_images(str(parquet)).features["label"].names == ["a", "b"]
