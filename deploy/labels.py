"""Class names shipped with a model (labels.txt and the model's metadata), in index order.

`imagenet-1k` is deploy/imagenet1k_labels.txt: the ImageNet-1k class names in the order all
three sources index them. It is the list mmpretrain ships (mmpretrain.datasets.categories.
IMAGENET_CATEGORIES) and equals PaddleClas's ppcls/utils/imagenet1k_label_list.txt line for
line; tests/test_deploy.py checks both against the installed packages. MindCV ships none.
"""
from __future__ import annotations

from pathlib import Path

IMAGENET1K = "imagenet-1k"
IMAGENET1K_FILE = Path(__file__).with_name("imagenet1k_labels.txt")


def read_label_file(path: Path) -> list[str]:
    """One class name per line, in index order; blank lines are an error (they shift every
    later index)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    blank = [i + 1 for i, line in enumerate(lines) if not line.strip()]
    if blank:
        raise ValueError(f"{path}: blank line {blank[0]}: every line names one class")
    return [line.strip() for line in lines]


def resolve(labels, num_classes: int) -> tuple[list[str], str]:
    """(names, where they came from) for an entry's `labels` (after the manifest loader:
    'imagenet-1k', a list of names, or absent)."""
    if labels is None:
        if num_classes == 1000:
            labels = IMAGENET1K
        else:
            return ([f"class_{i}" for i in range(num_classes)],
                    "none given: index names (set `labels:` in the manifest entry)")
    if labels == IMAGENET1K:
        names, origin = read_label_file(IMAGENET1K_FILE), IMAGENET1K
    else:
        names, origin = list(labels), "manifest"
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} labels for {num_classes} classes")
    return names, origin
