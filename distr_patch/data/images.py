"""Image classification data: an ``imagefolder`` directory or a data set with image and label columns."""
from __future__ import annotations

import functools
from pathlib import Path

from .errors import DataError, missing_column
from .source import open_dataset


def load_images(data: str, *, split: str = "train", name: str | None = None, image_column: str = "image",
                label_column: str | None = "label", limit: int | None = None):
    """A ``datasets.Dataset`` with ``image_column`` (PIL images, RGB: ``rgb_image``) and ``label_column`` (class
    index; -1 = none; None: labels not needed, e.g. for embedding fidelity). ``limit``: a sample of that many rows,
    the same on every call (seeded, kept in the data's order): an image folder lists its rows class by class, so its
    first rows would be its first classes only. An image that cannot be read is a DataError naming its file, raised
    where it is read."""
    ds = open_dataset(data, split=split, name=name, folder_builder="imagefolder")
    if image_column not in ds.column_names:
        raise missing_column("--image-column", image_column, ds.column_names)
    if label_column is not None and label_column not in ds.column_names:
        raise missing_column("--label-column", label_column, ds.column_names)
    ds = _image_paths_as_images(ds, image_column, Path(data).expanduser())
    if label_column is not None:
        ds = _text_labels_as_classes(ds, label_column)
    if label_column is not None and Path(data).expanduser().is_dir():
        ds = _numbered_classes_in_order(ds, label_column)
    if limit is not None and limit < len(ds):
        import torch

        rows = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:limit].sort().values
        ds = ds.select(rows.tolist())
    return _decoded_as_rgb(ds, image_column)


def _image_paths_as_images(ds, column: str, source: Path):
    """A column of image file paths (a JSONL, CSV or parquet file listing images) as a datasets ``Image`` column;
    a relative path is found beside the data file first, else from the working directory. Any other column that
    is not images is a DataError naming ``--image-column``."""
    import datasets

    feature = ds.features[column]
    if isinstance(feature, datasets.Image):
        return ds
    if not (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")):
        raise DataError(f"--image-column {column}: holds {feature}, not images or image file paths")
    base = source.parent if source.is_file() else source

    def located(paths):
        return {column: [p if p is None or Path(p).is_absolute() or not (base / p).exists() else str(base / p)
                         for p in paths]}

    ds = ds.map(located, input_columns=column, batched=True, desc="image paths")
    return ds.cast_column(column, datasets.Image())


def _text_labels_as_classes(ds, column: str):
    """Class names in a text label column as a ``ClassLabel`` (names sorted; matched to the model's labels by name);
    integer labels are kept, anything else is a DataError naming ``--label-column``."""
    import datasets

    feature = ds.features[column]
    if isinstance(feature, datasets.ClassLabel):
        return ds
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        return ds.class_encode_column(column)
    if isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint")):
        return ds
    raise DataError(f"--label-column {column}: holds {feature}, expected class indices or class names")


def _numbered_classes_in_order(ds, column: str):
    """An image folder's classes are its folder names sorted as text: folders 0 ... 11 gave "10" label 2. Where
    every name is a number, the labels follow the numbers' order (folder "10" is label 10 of 0 ... 11)."""
    import datasets

    feature = ds.features[column]
    names = list(getattr(feature, "names", None) or [])
    if not isinstance(feature, datasets.ClassLabel) or not names or not all(n.isdecimal() for n in names):
        return ds
    ordered = sorted(names, key=int)
    if ordered == names:
        return ds
    new_label = [ordered.index(n) for n in names]
    features = ds.features.copy()
    features[column] = datasets.ClassLabel(names=ordered)
    return ds.map(lambda labels: {column: [new_label[y] if y >= 0 else y for y in labels]}, input_columns=column,
                  batched=True, features=features, desc="class folders in number order")


def _decoded_as_rgb(ds, column: str):
    """``ds`` whose ``column`` (a datasets ``Image`` feature) decodes to ``rgb_image``, and an image it cannot read
    is a DataError naming ``--data`` and the file; another feature is left as it is. (A feature, not a format transform: a
    transform would decode every image where only the labels are read.)"""
    import datasets

    feature = ds.features[column]
    if type(feature) is not datasets.Image or not feature.decode:
        return ds
    return ds.cast_column(column, _rgb_image_feature()(mode=feature.mode))


@functools.cache
def _rgb_image_feature():
    import datasets

    class RGBImage(datasets.Image):
        """``datasets.Image`` decoding to ``rgb_image``; an unreadable image is a DataError naming its file."""

        def decode_example(self, value, token_per_repo_id=None):
            try:
                image = super().decode_example(value, token_per_repo_id=token_per_repo_id)
            except (OSError, ValueError, SyntaxError) as e:  # PIL's UnidentifiedImageError is an OSError
                where = (value.get("path") if isinstance(value, dict) else value) or "(bytes)"
                raise DataError(f"--data: image {where} cannot be read: {e}") from None
            return rgb_image(image)

    RGBImage.__qualname__ = "RGBImage"  # its repr in ds.features
    return RGBImage


def rgb_image(image):
    """``image`` as RGB. 16-bit grayscale (PNG mode I;16, or I) keeps its top 8 bits: PIL's own convert clips every
    value above 255, which makes a 16-bit image white. Other modes (L, P, RGBA, CMYK, ...) go through convert."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I"):
        import numpy as np
        from PIL import Image

        values = np.asarray(image).astype(np.int64)
        if image.mode != "I" or values.max(initial=0) > 255:  # 16-bit values; an 8-bit image kept as I is as is
            values = values.clip(0, 65535) >> 8
        return Image.fromarray(values.clip(0, 255).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")
