"""Deterministic generated images for the logit gate when no --data is given.

Written as PNG files (numpy + zlib only) so every worker decodes them with its own source's
decoder, exactly as it would decode a dataset image. Images have different sizes and aspect
ratios so the resize and crop steps are exercised, and smooth structure plus texture so the
network's activations are not degenerate.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

SIZES = [(256, 256), (300, 400), (375, 500), (480, 320), (224, 224), (333, 250)]


def write_png(path: Path, rgb: np.ndarray) -> None:
    """Write an HxWx3 uint8 array as an 8-bit RGB PNG."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError("write_png expects an HxWx3 uint8 array")
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[row].tobytes() for row in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))
    path.write_bytes(png)


def synth_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth colour field + a few shapes + fine noise, as uint8 RGB."""
    coarse = rng.uniform(0, 255, size=(4, 5, 3))
    ys = np.linspace(0, coarse.shape[0] - 1, height)
    xs = np.linspace(0, coarse.shape[1] - 1, width)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, coarse.shape[0] - 1), np.minimum(x0 + 1, coarse.shape[1] - 1)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    img = (coarse[y0][:, x0] * (1 - fy) * (1 - fx) + coarse[y1][:, x0] * fy * (1 - fx)
           + coarse[y0][:, x1] * (1 - fy) * fx + coarse[y1][:, x1] * fy * fx)
    yy, xx = np.mgrid[0:height, 0:width]
    for _ in range(3):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        r = rng.uniform(0.1, 0.35) * min(height, width)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
        img[mask] = rng.uniform(0, 255, size=3)
    img += rng.normal(0, 12, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def generate_images(directory: Path, count: int, seed: int = 0) -> list[Path]:
    """Write `count` images into `directory`; same seed, same bytes."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        height, width = SIZES[index % len(SIZES)]
        path = directory / f"generated_{index:04d}.png"
        write_png(path, synth_image(rng, height, width))
        paths.append(path)
    return paths


def synthetic_batch(seed: int, count: int, mean, std, scale: float = 1.0,
                    size: int = 224) -> np.ndarray:
    """`count` synthetic RGB images normalised as (x * scale - mean) / std, NCHW float32,
    in float32 arithmetic throughout, as the sources' own data preprocessors normalise.

    Used to set BatchNorm statistics of random-init checkpoints: images, not i.i.d. noise,
    because noise has no spatial correlation and statistics taken on it make real images'
    activations blow up (logits ~1e3 instead of ~1e1)."""
    rng = np.random.default_rng(seed + 1)
    mean = np.asarray(mean, dtype=np.float32)
    std = np.asarray(std, dtype=np.float32)
    imgs = np.stack([(synth_image(rng, size, size).astype(np.float32) * np.float32(scale)
                      - mean) / std for _ in range(count)])
    return np.ascontiguousarray(imgs.transpose(0, 3, 1, 2).astype(np.float32))


# How a test checkpoint's BatchNorm statistics are set (`make_checkpoint --init`). The gate
# must give the same verdict whichever a user's checkpoint resembles:
#   images: train-mode passes over synthetic images (logits like a trained model's, ~1e1);
#   noise:  a pass over i.i.d. N(0, 1) tensors (real images then give logits ~1e3);
#   plain:  the framework's default statistics (mean 0, variance 1): mid layers barely reach
#           the logits, as in an untrained model.
INITS = ("images", "noise", "plain")


def calibration_batch(init: str, seed: int, count: int, mean, std, scale: float = 1.0,
                      size: int = 224) -> np.ndarray | None:
    """The batch a checkpoint maker's train-mode pass sees for `init`; None for plain."""
    if init == "images":
        return synthetic_batch(seed, count, mean, std, scale=scale, size=size)
    if init == "noise":
        rng = np.random.default_rng(seed + 1)
        return rng.standard_normal((count, 3, size, size)).astype(np.float32)
    if init == "plain":
        return None
    raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")


# Kinds of file ImageNet val really holds besides RGB JPEGs (docs/environments.md): every source's
# decoder must cope with them as the source's own evaluation would.
ODD_KINDS = ("grayscale", "cmyk", "png_named_jpeg")


def write_jpeg(path: Path, rgb: np.ndarray, kind: str = "rgb", quality: int = 90) -> None:
    """Write an image as ImageNet stores it: RGB JPEG, grayscale JPEG, CMYK JPEG, or a PNG
    under a .JPEG name; or a JPEG whose EXIF says to turn it (as phone photos are). Needs
    Pillow (orchestrator environment)."""
    from PIL import Image

    image = Image.fromarray(rgb)
    if kind == "rgb":
        image.save(path, format="JPEG", quality=quality)
    elif kind == "grayscale":
        image.convert("L").save(path, format="JPEG", quality=quality)
    elif kind == "cmyk":
        image.convert("CMYK").save(path, format="JPEG", quality=quality)
    elif kind == "png_named_jpeg":
        image.save(path, format="PNG")
    elif kind == "exif_rotated":   # stored on its side, EXIF Orientation 6: shown turned 90°
        exif = Image.Exif()
        exif[0x0112] = 6
        image.save(path, format="JPEG", quality=quality, exif=exif)
    else:
        raise ValueError(f"unknown image kind {kind!r}")


def imagenet_like(directory: Path, count: int, seed: int = 0, odd_every: int = 0,
                  size: tuple[int, int] = (375, 500)) -> list[Path]:
    """`count` JPEGs of ImageNet val's typical size named ILSVRC2012_val_%08d.JPEG; with
    odd_every=k, every k-th image is grayscale, CMYK or a PNG named .JPEG in turn."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        height, width = (size if index % 3 else size[::-1])
        kind = "rgb"
        if odd_every and index % odd_every == odd_every - 1:
            kind = ODD_KINDS[(index // odd_every) % len(ODD_KINDS)]
        path = directory / f"ILSVRC2012_val_{index + 1:08d}.JPEG"
        write_jpeg(path, synth_image(rng, height, width), kind)
        paths.append(path)
    return paths
