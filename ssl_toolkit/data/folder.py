"""Image folders: an ImageFolder tree (one subfolder per class) or a flat folder of unlabeled images.

Listing follows torchvision's ``ImageFolder``: class names are the subfolder names sorted, labels are
their indices, files are found recursively inside each class folder. A folder holding images and no
class subfolders is read as unlabeled (label ``-1``). The dataset hands the raw file bytes to its
transform, so decoding happens once, in the transform (the :class:`~ssl_toolkit.augment.ViewSampler`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from torch.utils.data import Dataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
UNLABELED = -1


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _images_under(folder: Path) -> list[str]:
    # same walk order as torchvision's make_dataset, so sample indices agree with ImageFolder's
    return [
        os.path.join(root, f)
        for root, _, files in sorted(os.walk(folder, followlinks=True))
        for f in sorted(files)
        if _is_image(f)
    ]


def list_image_folder(root: str | os.PathLike) -> tuple[list[tuple[str, int]], list[str]]:
    """List an image folder.

    Args:
        root: an ImageFolder tree (``root/<class>/**/<image>``) or a flat folder of images.

    Returns:
        ``(samples, classes)``: ``samples`` is a list of ``(path, label)`` in class then path order;
        ``classes`` the sorted class names (empty for a flat folder, whose labels are all ``-1``).

    Raises:
        FileNotFoundError: ``root`` does not exist or is not a folder.
        ValueError: no image with extension jpg/jpeg/png/webp is found.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist or is not a directory")
    entries = sorted(os.scandir(root), key=lambda e: e.name)
    per_class = {e.name: _images_under(Path(e.path)) for e in entries if e.is_dir()}
    if any(per_class.values()):
        # every subfolder is a class, as in torchvision, so labels match an ImageFolder of the same tree
        empty = [c for c, files in per_class.items() if not files]
        if empty:
            raise ValueError(f"class folder(s) {empty} under {str(root)!r} hold no images; remove them")
        classes = list(per_class)
        samples = [(p, label) for label, c in enumerate(classes) for p in per_class[c]]
    else:
        classes = []
        samples = [(e.path, UNLABELED) for e in entries if e.is_file() and _is_image(e.name)]
    if not samples:
        raise ValueError(
            f"image folder {str(root)!r} holds no images ({'/'.join(e[1:] for e in IMAGE_EXTENSIONS)}), "
            "neither directly nor in class subfolders"
        )
    return samples, classes


class ImageFolderDataset(Dataset):
    """Map-style dataset over :func:`list_image_folder`.

    Each item is ``{"views": transform(file_bytes), "label": int, "key": str}`` where ``key`` is the path
    relative to the root without extension (unique within the folder). Without a transform
    ``views`` holds the raw bytes.
    """

    def __init__(self, root: str | os.PathLike, transform: Callable[[bytes], Any] | None = None):
        self.root = str(root)
        self.samples, self.classes = list_image_folder(root)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        path, label = self.samples[index]
        with open(path, "rb") as f:
            data = f.read()
        views = self.transform(data) if self.transform is not None else data
        key = os.path.splitext(os.path.relpath(path, self.root))[0]
        return {"views": views, "label": label, "key": key}
