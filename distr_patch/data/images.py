"""Image classification data: an ``imagefolder`` directory or a data set with image and label columns."""
from __future__ import annotations

from .errors import missing_column
from .source import open_dataset


def load_images(data: str, *, split: str = "train", name: str | None = None, image_column: str = "image",
                label_column: str | None = "label", limit: int | None = None):
    """A ``datasets.Dataset`` with ``image_column`` (PIL images) and ``label_column`` (class index; -1 = none;
    None: labels not needed, e.g. for embedding fidelity). ``limit``: a sample of that many rows, the same on
    every call (seeded, kept in the data's order): an image folder lists its rows class by class, so its first
    rows would be its first classes only."""
    ds = open_dataset(data, split=split, name=name, folder_builder="imagefolder")
    if image_column not in ds.column_names:
        raise missing_column("--image-column", image_column, ds.column_names)
    if label_column is not None and label_column not in ds.column_names:
        raise missing_column("--label-column", label_column, ds.column_names)
    if limit is not None and limit < len(ds):
        import torch

        rows = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:limit].sort().values
        ds = ds.select(rows.tolist())
    return ds
