"""Safe image loading (plvm.images): limits, corrupt files, odd modes, EXIF rotation."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from plvm.images import (
    CorruptImageError,
    ImageError,
    ImageLimits,
    ImageTooLargeError,
    UnsupportedImageError,
    decode_image,
    load_image,
)


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def noise(w: int = 40, h: int = 30, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that *claims* width x height (1-bit) with a tiny, all-zero IDAT: a decompression-bomb shape."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )


def test_plain_rgb_png_round_trips_with_hash_and_ext():
    data = encode(noise())
    loaded = decode_image(data)
    assert loaded.image.mode == "RGB" and loaded.image.size == (40, 30)
    assert loaded.ext == "png" and loaded.format == "PNG" and len(loaded.sha256) == 64
    assert np.array_equal(np.asarray(loaded.image), np.asarray(noise()))


@pytest.mark.parametrize("cut", [0.5, 0.9])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files_give_one_line_corrupt_error(fmt, cut):
    data = encode(noise(120, 90), fmt)
    with pytest.raises(CorruptImageError) as err:
        decode_image(data[: int(len(data) * cut)], label="photo.x")
    assert "\n" not in str(err.value) and "photo.x" in str(err.value)


@pytest.mark.parametrize("data", [b"", b"not an image at all", b"%PDF-1.4 fake", b"\x89PNG\r\n\x1a\n"])
def test_non_images_are_unsupported_or_corrupt(data):
    with pytest.raises((UnsupportedImageError, CorruptImageError)) as err:
        decode_image(data)
    assert "\n" not in str(err.value)


def test_decompression_bomb_is_refused_before_decoding():
    bomb = png_header_only(30_000, 30_000)  # 900 megapixels, a few hundred bytes
    assert len(bomb) < 500
    with pytest.raises(ImageTooLargeError, match="pixels"):
        decode_image(bomb)
    with pytest.raises(ImageTooLargeError, match="megapixels"):
        decode_image(png_header_only(5_000, 5_000), ImageLimits(max_pixels=10_000_000))


def test_explicit_pixel_side_and_byte_limits():
    data = encode(noise(200, 100))
    with pytest.raises(ImageTooLargeError, match="megapixels"):
        decode_image(data, ImageLimits(max_pixels=10_000))
    with pytest.raises(ImageTooLargeError, match="side"):
        decode_image(data, ImageLimits(max_side=150))
    with pytest.raises(ImageTooLargeError, match="limit"):
        decode_image(data, ImageLimits(max_bytes=100))


def test_file_size_is_checked_before_reading(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(encode(noise(100, 100)))
    with pytest.raises(ImageTooLargeError, match="big.png"):
        load_image(path, ImageLimits(max_bytes=1000))
    with pytest.raises(ImageError, match="no such image file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="not a file"):
        load_image(tmp_path)


def test_cmyk_jpeg_becomes_rgb():
    cmyk = Image.new("CMYK", (32, 16), (0, 255, 255, 0))  # pure red in CMYK
    loaded = decode_image(encode(cmyk, "JPEG", quality=95))
    assert loaded.original_mode == "CMYK" and loaded.image.mode == "RGB"
    r, g, b = loaded.image.getpixel((16, 8))
    assert r > 200 and g < 60 and b < 60


def test_16_bit_greyscale_is_rescaled_not_clipped():
    ramp = np.linspace(0, 65535, 64).astype(np.uint16)[None, :].repeat(8, axis=0)
    loaded = decode_image(encode(Image.fromarray(ramp)))
    assert loaded.original_mode.startswith("I")
    arr = np.asarray(loaded.image)
    assert loaded.image.mode == "RGB"
    assert arr[0, 0, 0] == 0 and arr[0, -1, 0] == 255 and 100 < arr[0, 32, 0] < 160  # a ramp, not a cliff


def test_alpha_and_palette_transparency_composite_on_white():
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    loaded = decode_image(encode(rgba))
    assert loaded.image.mode == "RGB"
    assert loaded.image.getpixel((5, 5)) == (255, 255, 255) and loaded.image.getpixel((0, 0)) == (0, 0, 255)
    pal = Image.new("P", (10, 10), 0)
    pal.putpalette([0, 0, 0] + [0, 255, 0] * 255)
    pal.putpixel((1, 1), 1)
    gif = decode_image(encode(pal, "GIF", transparency=0))
    assert gif.image.mode == "RGB" and gif.image.getpixel((5, 5)) == (255, 255, 255)
    assert gif.image.getpixel((1, 1)) == (0, 255, 0)
    la = decode_image(encode(Image.new("LA", (4, 4), (0, 255))))
    assert la.image.getpixel((0, 0)) == (0, 0, 0)


def test_exif_rotation_is_applied():
    wide = Image.new("RGB", (60, 20), (10, 200, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    loaded = decode_image(encode(wide, "JPEG", exif=exif.tobytes()))
    assert loaded.image.size == (20, 60)


def test_first_frame_of_animation_and_one_bit_images():
    frames = [Image.new("RGB", (12, 12), c) for c in [(255, 0, 0), (0, 0, 255)]]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    loaded = decode_image(buf.getvalue())
    assert loaded.image.mode == "RGB" and loaded.image.getpixel((3, 3))[0] > 200
    one_bit = decode_image(encode(Image.new("1", (8, 8), 1)))
    assert one_bit.image.getpixel((0, 0)) == (255, 255, 255)
