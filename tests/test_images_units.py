"""The test-image writers of verify/images.py, in-process: what ImageNet-like folders the
accuracy, scale and demo tests are built from (names, sizes, the odd files in turn, the seed),
and write_jpeg's formats and quality."""
from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from PIL import Image

from verify.images import generate_images, imagenet_like, write_jpeg, write_png

RGB = np.random.default_rng(5).integers(0, 255, (20, 30, 3), dtype=np.uint8)


def _opened(path):
    with Image.open(path) as image:
        return image.format, image.mode, image.size


def test_imagenet_like_names_orientations_and_odd_files_in_turn(tmp_path):
    """Every third image (from the first) is portrait; with odd_every=2 every second image is
    grayscale, CMYK, then a PNG under a .JPEG name."""
    paths = imagenet_like(tmp_path, 7, odd_every=2, size=(30, 40))
    assert [p.name for p in paths] == [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, 8)]
    assert [_opened(p) for p in paths] == [     # PIL's size is (width, height)
        ("JPEG", "RGB", (30, 40)), ("JPEG", "L", (40, 30)), ("JPEG", "RGB", (40, 30)),
        ("JPEG", "CMYK", (30, 40)), ("JPEG", "RGB", (40, 30)), ("PNG", "RGB", (40, 30)),
        ("JPEG", "RGB", (30, 40))]
    plain = imagenet_like(tmp_path / "plain", 2)         # defaults: ImageNet val's 375x500, RGB
    assert [_opened(p) for p in plain] == [("JPEG", "RGB", (375, 500)),
                                          ("JPEG", "RGB", (500, 375))]


def test_imagenet_like_is_the_same_bytes_for_a_seed(tmp_path):
    def written(name, **seed):
        return [p.read_bytes() for p in imagenet_like(tmp_path / name, 2, size=(20, 20), **seed)]

    assert written("default") == written("zero", seed=0)
    assert written("one", seed=1) != written("zero")


def test_write_jpeg_is_a_jpeg_at_the_quality_asked_whatever_the_name(tmp_path):
    """The format comes from `kind`, not the file name; quality 90 unless told."""
    def pil(mode, **save):
        buffer = io.BytesIO()
        image = Image.fromarray(RGB)
        (image if mode == "RGB" else image.convert(mode)).save(buffer, **save)
        return buffer.getvalue()

    for kind, mode in (("rgb", "RGB"), ("grayscale", "L"), ("cmyk", "CMYK")):
        write_jpeg(tmp_path / kind, RGB, kind, quality=60)
        assert (tmp_path / kind).read_bytes() == pil(mode, format="JPEG", quality=60), kind
    write_jpeg(tmp_path / "default", RGB)
    assert (tmp_path / "default").read_bytes() == pil("RGB", format="JPEG", quality=90)
    write_jpeg(tmp_path / "png", RGB, "png_named_jpeg")
    assert _opened(tmp_path / "png") == ("PNG", "RGB", (30, 20))
    # Stored as given, with EXIF Orientation 6 (turn 90 degrees to show), at the quality asked.
    exif = Image.Exif()
    exif[0x0112] = 6
    write_jpeg(tmp_path / "turned", RGB, "exif_rotated", quality=60)
    assert (tmp_path / "turned").read_bytes() == pil("RGB", format="JPEG", quality=60,
                                                      exif=exif)
    with Image.open(tmp_path / "turned") as turned:
        assert turned.getexif()[0x0112] == 6 and turned.size == (30, 20)
    write_jpeg(tmp_path / "turned90", RGB, "exif_rotated")
    assert (tmp_path / "turned90").read_bytes() == pil("RGB", format="JPEG", quality=90,
                                                        exif=exif)
    with pytest.raises(ValueError) as caught:
        write_jpeg(tmp_path / "x.JPEG", RGB, "webp")
    assert str(caught.value) == "unknown image kind 'webp'"


def test_write_png_round_trips_and_takes_only_hxwx3_uint8(tmp_path):
    write_png(tmp_path / "x.png", RGB)
    with Image.open(tmp_path / "x.png") as image:
        assert (image.format, image.mode) == ("PNG", "RGB")
        assert np.array_equal(np.asarray(image), RGB)
    # PNG's frame (RFC 2083): the signature first, an empty IEND chunk with its CRC last.
    data = (tmp_path / "x.png").read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert data.endswith(b"\x00\x00\x00\x00IEND" + zlib.crc32(b"IEND").to_bytes(4, "big"))
    for bad in (RGB.astype(np.float32), RGB[..., 0], np.dstack([RGB, RGB[..., :1]])):
        with pytest.raises(ValueError) as caught:
            write_png(tmp_path / "bad.png", bad)
        assert str(caught.value) == "write_png expects an HxWx3 uint8 array"
    assert not (tmp_path / "bad.png").exists()


def test_generate_images_makes_its_folder_and_is_the_same_bytes_for_a_seed(tmp_path):
    def written(name, **seed):
        return [p.read_bytes() for p in generate_images(tmp_path / name / "deep", 2, **seed)]

    first = written("default")
    assert written("default") == first == written("zero", seed=0)   # into an existing folder
    assert written("one", seed=1) != first
    assert [p.name for p in generate_images(tmp_path / "n", 2)] == ["generated_0000.png",
                                                                    "generated_0001.png"]


def test_the_generated_pictures_are_fixed_by_their_seed_in_every_version():
    """A report names generated verification images by seed and count alone
    (report['verification']['images'] = {"kind": "generated", "count", "seed"}), and every
    Ray node generates its own: the seed must mean the same pixels on every machine and in
    every version, or a report cannot be reproduced. So the pixels of the six sizes from seed
    0 are pinned (decoded pixels, not PNG bytes, which depend on the zlib build). A deliberate
    change to verify/images.py synth_image changes what old reports' seeds mean: update this
    digest and say so in the changelog."""
    import hashlib

    from verify.images import SIZES, synth_image

    rng = np.random.default_rng(0)
    pixels = [synth_image(rng, height, width) for height, width in SIZES]
    assert [p.shape for p in pixels] == [(h, w, 3) for h, w in SIZES]
    assert all(p.dtype == np.uint8 for p in pixels)
    # What the docstring promises, loosely: the full range, fine noise between neighbours
    # (N(0, 12) each: a median step of about 11), a few sharp shape edges.
    for p in pixels:
        steps = np.abs(np.diff(p.astype(np.int16), axis=1))
        assert (p.min(), p.max()) == (0, 255) and 8 <= np.median(steps) <= 16
        assert 0.001 < (steps > 60).mean() < 0.01
    digest = hashlib.sha256(b"".join(p.tobytes() for p in pixels)).hexdigest()
    assert digest == "c15a6b76477ad4ce14e0f2ba7a1eb192d5b6a6bb1471e23a46658ec8aed7a544"


def test_the_batch_a_checkpoint_maker_calibrates_on_follows_the_init():
    """verify/images.py calibration_batch, which the three make_checkpoint scripts call in
    their own environments: synthetic images for `images` (the same as synthetic_batch),
    seeded N(0, 1) tensors for `noise`, nothing for `plain`, and an unknown init refused
    with the choices."""
    from verify.images import INITS, calibration_batch, synthetic_batch

    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    images = calibration_batch("images", 3, 2, mean, std, size=32)
    np.testing.assert_array_equal(images, synthetic_batch(3, 2, mean, std, size=32))
    scaled = calibration_batch("images", 3, 2, mean, std, scale=1 / 255, size=32)
    np.testing.assert_array_equal(scaled, synthetic_batch(3, 2, mean, std, scale=1 / 255,
                                                          size=32))
    noise = calibration_batch("noise", 3, 4, mean, std, size=32)
    assert noise.shape == (4, 3, 32, 32) and noise.dtype == np.float32
    np.testing.assert_array_equal(
        noise, np.random.default_rng(4).standard_normal((4, 3, 32, 32)).astype(np.float32))
    assert abs(float(noise.mean())) < 0.05 and abs(float(noise.std()) - 1) < 0.05
    assert calibration_batch("noise", 3, 1, mean, std).shape == (1, 3, 224, 224)  # default
    assert calibration_batch("plain", 3, 4, mean, std) is None
    assert INITS == ("images", "noise", "plain")
    with pytest.raises(ValueError) as caught:
        calibration_batch("trained", 3, 4, mean, std)
    assert str(caught.value) == "init must be one of images, noise, plain, got 'trained'"
