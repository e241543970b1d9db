"""Labelled image sets for the accuracy gate: the three ImageNet-val layouts in use.

- class sub-folders (torchvision ImageFolder): ROOT/n01440764/*.JPEG ... Synset folder names
  map to ImageNet class indices in sorted synset order (verify/imagenet_synsets.txt, the
  1000 ILSVRC-2012 synsets as timm ships them), so a subset of classes keeps the right
  indices; folders named by index (ROOT/0/, ROOT/65/) map to that index.
- flat folder + `val.txt`: `ILSVRC2012_val_00000001.JPEG 65` per line (mmcls, OMZ).
- flat folder + `val_map.txt`: `ILSVRC2012_val_00000001.JPEG<TAB>65` per line (IxRT).

Everything wrong with a dataset is found here, before any model is built: a missing or empty
folder, a label file naming missing images, a malformed line, a label out of range, an unknown
folder name. Each error names the file, the line or folder and the cause.

Framework-free (standard library + numpy): the orchestrator loads the dataset, the workers
only ever see image paths.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from manifests.bounded import LABEL_FILE_FACTOR, DocumentTooLarge, read_bounded

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
LABEL_FILES = ("val.txt", "val_map.txt")
SYNSETS_FILE = Path(__file__).with_name("imagenet_synsets.txt")
SYNSET = re.compile(r"^n\d{8}$")
IMAGENET_CLASSES = 1000
FULL_IMAGENET_VAL = 50000


class DatasetError(Exception):
    """A dataset that cannot be evaluated; the message says where and why."""


@dataclass
class Dataset:
    root: Path
    layout: str                       # "imagefolder" | "val.txt" | "val_map.txt"
    paths: list[Path]
    labels: list[int]
    note: str = ""

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def classes(self) -> int:
        return len(set(self.labels))

    def describe(self) -> dict:
        out = {"dir": str(self.root), "layout": self.layout, "images": len(self),
               "classes": self.classes}
        if self.note:
            out["note"] = self.note
        return out


def _synset_index() -> dict[str, int]:
    names = SYNSETS_FILE.read_text().split()
    return {name: i for i, name in enumerate(sorted(names))}


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def _parse_label(text: str, where: str) -> int:
    try:
        label = int(text)
    except ValueError:
        raise DatasetError(f"{where}: label {text!r} is not an integer class index") from None
    if not 0 <= label < IMAGENET_CLASSES:
        raise DatasetError(f"{where}: label {label} is out of range (ImageNet class indices "
                           f"are 0..{IMAGENET_CLASSES - 1})")
    return label


def _from_label_file(root: Path, name: str) -> tuple[list[Path], list[int]]:
    label_file = root / name
    paths, labels, missing = [], [], []
    seen: dict[str, int] = {}
    try:
        text = read_bounded(label_file, factor=LABEL_FILE_FACTOR)
    except (DocumentTooLarge, UnicodeDecodeError) as exc:
        raise DatasetError(str(exc)) from None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{label_file}, line {number}"
        if name == "val_map.txt":
            parts = raw.split("\t")       # splitlines() took the line ending
            if len(parts) != 2:
                raise DatasetError(f"{where}: expected 'NAME<TAB>LABEL', got {raw!r}")
        else:
            parts = line.rsplit(None, 1)
            if len(parts) != 2:
                raise DatasetError(f"{where}: expected 'NAME LABEL', got {raw!r}")
        image, label = parts[0].strip(), _parse_label(parts[1].strip(), where)
        if Path(image).is_absolute() or ".." in Path(image).parts:
            raise DatasetError(f"{where}: {image!r} is outside the dataset folder (names are "
                               "relative to it, without '..')")
        if image in seen:
            raise DatasetError(f"{where}: {image} is listed twice (first on line "
                               f"{seen[image]})")
        seen[image] = number
        path = root / image
        try:
            present = path.is_file()
        except OSError as exc:      # e.g. a name longer than the filesystem allows
            raise DatasetError(f"{where}: cannot use {image[:80]!r}: {exc.strerror}") from None
        if not present:
            missing.append(image)
        paths.append(path)
        labels.append(label)
    if missing:
        shown = ", ".join(missing[:5]) + (f" (+{len(missing) - 5} more)"
                                          if len(missing) > 5 else "")
        raise DatasetError(f"{label_file} names {len(missing)} image(s) that are not in "
                           f"{root}: {shown}")
    if not paths:
        raise DatasetError(f"{label_file} lists no images")
    return paths, labels


def _from_folders(root: Path) -> tuple[list[Path], list[int], str]:
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    with_images = [(f, sorted(p for p in f.rglob("*") if _is_image(p))) for f in folders]
    with_images = [(f, files) for f, files in with_images if files]
    if not with_images:
        loose = [p for p in root.iterdir() if _is_image(p)]
        hint = (f"; it holds {len(loose)} image file(s) but no val.txt or val_map.txt to "
                f"label them" if loose else "")
        raise DatasetError(f"dataset {root} is empty: no class sub-folders with images, no "
                           f"val.txt, no val_map.txt{hint}")
    names = [f.name for f, _ in with_images]
    if all(SYNSET.match(n) for n in names):
        index = _synset_index()
        unknown = [n for n in names if n not in index]
        if unknown:
            raise DatasetError(f"dataset {root}: folder(s) {', '.join(unknown[:5])} are not "
                               f"ImageNet-1k synsets")
        label_of, note = index.__getitem__, "synset folders mapped in sorted synset order"
    elif all(n.isdigit() for n in names):
        for n in names:
            _parse_label(n, f"dataset {root}: folder {n!r}")
        label_of, note = int, "folders named by class index"
    else:
        odd = [n for n in names if not (SYNSET.match(n) or n.isdigit())]
        raise DatasetError(f"dataset {root}: class folders must all be ImageNet synsets "
                           f"(n01440764) or all class indices (0..999); found "
                           f"{', '.join(odd[:5])}")
    paths, labels = [], []
    for folder, files in with_images:
        paths += files
        labels += [label_of(folder.name)] * len(files)
    return paths, labels, note


def load_dataset(root: str | Path) -> Dataset:
    """Parse and check a dataset folder; raise DatasetError with the cause."""
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetError(f"dataset folder {root} does not exist")
    if not root.is_dir():
        raise DatasetError(f"dataset {root} is not a folder")
    for name in LABEL_FILES:   # there but not a file (a FIFO, a link to a device): say so
        if (root / name).exists() and not (root / name).is_file():
            raise DatasetError(f"{root / name}: refused: not a regular file")
    present = [name for name in LABEL_FILES if (root / name).is_file()]
    if present:
        layout = present[0]
        paths, labels = _from_label_file(root, layout)
        note = f"{present[1]} ignored: {layout} is used" if len(present) > 1 else ""
    else:
        layout = "imagefolder"
        paths, labels, note = _from_folders(root)
    return Dataset(root, layout, paths, labels, note)


def check_num_classes(dataset: Dataset, num_classes: int, entry: str) -> None:
    """Labels must be classes the model has."""
    top = max(dataset.labels)
    if top >= num_classes:
        count = sum(1 for label in dataset.labels if label >= num_classes)
        raise DatasetError(f"entry {entry!r} has num_classes {num_classes}, but dataset "
                           f"{dataset.root} has {count} image(s) labelled up to {top}")


def spread_subset(labels: list[int], limit: int | None) -> list[int]:
    """Indices of a deterministic subset of at most `limit` samples, spread over all classes.

    Round robin over the classes in label order, taking each class's images in file order:
    round r takes the r-th image of every class. A last partial round takes classes evenly
    spaced over the label range, so `--limit 500` on ImageNet val takes one image from every
    other class rather than from the first 500 classes.
    """
    if limit is None or limit >= len(labels):
        return list(range(len(labels)))
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    classes = sorted(by_class)
    chosen: list[int] = []
    depth = 0
    while len(chosen) < limit:
        row = [by_class[c][depth] for c in classes if depth < len(by_class[c])]
        need = limit - len(chosen)
        if len(row) > need:
            row = [row[int(i)] for i in np.linspace(0, len(row) - 1, need).round()]
        chosen += row
        depth += 1
    return sorted(chosen)


def spread_pick(count: int, total: int) -> list[int]:
    """`count` indices evenly spaced over range(total) (the logit check's images)."""
    count = min(count, total)
    return sorted({int(i) for i in np.linspace(0, total - 1, count).round()})
