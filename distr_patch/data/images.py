"""Image classification data: an ``imagefolder`` directory or a data set with image and label columns."""
from __future__ import annotations

from .errors import missing_column
from .source import open_dataset


def load_images(data: str, *, split: str = "train", name: str | None = None, image_column: str = "image",
                label_column: str | None = "label", limit: int | None = None):
    """A ``datasets.Dataset`` with ``image_column`` (PIL images) and ``label_column`` (class index; -1 = none;
    None: labels not needed, e.g. for embedding fidelity)."""
    ds = open_dataset(data, split=split, name=name, folder_builder="imagefolder")
    if image_column not in ds.column_names:
        raise missing_column("--image-column", image_column, ds.column_names)
    if label_column is not None and label_column not in ds.column_names:
        raise missing_column("--label-column", label_column, ds.column_names)
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return ds
