"""Decode and preprocess images in parallel with inference (worker side).

Each adapter gives `per_image(path) -> array` (its source's own decode + transforms, one image)
and `collate(list of arrays) -> NCHW float32` (its source's batching: mmpretrain normalises
there). `batches()` runs per_image on a thread pool (cv2, PIL and MindSpore's C++ ops release
the GIL), keeps `prefetch` batches decoding ahead of the one being consumed, and yields batches
in file order, so inference on batch k overlaps decoding of batches k+1..k+prefetch.

An image the source's decoder cannot read is not a crash: it is left out of its batch and
returned with the decoder's error, so the report can count and list it. Nor is an image over
the pixel limit (`max_pixels`, `--max-image-pixels`): its size is read from its header with
Pillow before any decoder runs, and it is counted unreadable as "too large: W x H" (a 7 MB
25,000 x 25,000 JPEG would otherwise cost ~2 GB per decode thread). This check replaces
Pillow's own bomb guard in the worker (docs/usage.md, "Limits").
"""
from __future__ import annotations

import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np


@dataclass
class Batch:
    indices: list[int]                 # positions (in the input list) of the images in `array`
    array: np.ndarray | None           # NCHW float32, None when no image of the batch decoded
    unreadable: list[dict] = field(default_factory=list)   # {"index", "path", "error"}


@dataclass
class LoaderStats:
    images: int = 0
    unreadable: int = 0
    wait_s: float = 0.0                # time the consumer spent blocked waiting for images

    def as_dict(self) -> dict:
        return {"images": self.images, "unreadable": self.unreadable,
                "data_wait_s": round(self.wait_s, 3)}


def stack(arrays: list[np.ndarray]) -> np.ndarray:
    """The collate of sources that batch by stacking CHW float arrays (PaddleClas, MindCV)."""
    return np.ascontiguousarray(np.stack(arrays), dtype=np.float32)


# Every real ImageNet image is far below this (the largest val image is about 10 MP).
DEFAULT_MAX_PIXELS = 50_000_000


class ImageTooLarge(Exception):
    """An image whose header declares more pixels than the limit; never decoded."""


def header_size(path: str) -> tuple[int, int] | None:
    """(width, height) from the file's header, or None when Pillow cannot identify it (the
    source's own decoder then decides)."""
    from PIL import Image

    try:
        with Image.open(path) as img:   # reads the header only
            return img.size
    except Exception:  # noqa: BLE001 - unknown or broken header: the decoder reports it
        return None


def check_pixels(path: str, max_pixels: int | None) -> None:
    size = header_size(path) if max_pixels else None
    if size and size[0] * size[1] > max_pixels:
        raise ImageTooLarge(f"too large: {size[0]} x {size[1]} ({size[0] * size[1]:,} pixels, "
                            f"limit {max_pixels:,}: --max-image-pixels)")


def _unbound_pillow() -> None:
    """Pillow refuses headers over 2 x its MAX_IMAGE_PIXELS before we can read the size;
    check_pixels runs before every decode here, so it takes over that guard."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None


def _safe(per_image: Callable, path: str, max_pixels: int | None = DEFAULT_MAX_PIXELS):
    try:
        check_pixels(path, max_pixels)
        return per_image(path), None
    except ImageTooLarge as exc:
        return None, str(exc)
    except Exception as exc:  # noqa: BLE001 - any decoder failure marks the image unreadable
        text = str(exc).strip().splitlines()
        return None, f"{type(exc).__name__}: {text[0][:200] if text else ''}".rstrip(": ")


def batches(paths: list[str], per_image: Callable, collate: Callable, batch_size: int,
            workers: int, prefetch: int = 2, stats: LoaderStats | None = None,
            max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Iterator[Batch]:
    """Yield Batch objects over `paths` in order (see module doc)."""
    stats = stats if stats is not None else LoaderStats()
    if max_pixels:
        _unbound_pillow()
    workers = max(1, workers)
    window = batch_size * (prefetch + 1)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        pending: deque = deque()
        next_index = 0

        def top_up():
            nonlocal next_index
            while next_index < len(paths) and len(pending) < window:
                pending.append((next_index, pool.submit(_safe, per_image, paths[next_index],
                                                         max_pixels)))
                next_index += 1

        top_up()
        while pending:
            indices, arrays, bad = [], [], []
            while pending and len(indices) + len(bad) < batch_size:
                index, future = pending.popleft()
                start = time.perf_counter()
                array, error = future.result()
                stats.wait_s += time.perf_counter() - start
                if error is None:
                    indices.append(index)
                    arrays.append(array)
                else:
                    bad.append({"index": index, "path": paths[index], "error": error})
                top_up()
            stats.images += len(indices)
            stats.unreadable += len(bad)
            yield Batch(indices, collate(arrays) if arrays else None, bad)
