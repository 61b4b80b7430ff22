"""Safe image loading for everything a user hands to plvm (CLI paths, HTTP uploads, the chat REPL).

Every image goes through :func:`load_image` / :func:`decode_image`, which

* refuses files larger than :attr:`ImageLimits.max_bytes` before reading them whole;
* reads the header first and refuses images with more than :attr:`ImageLimits.max_pixels` pixels or a
  side longer than :attr:`ImageLimits.max_side` *before* decoding them (decompression bombs); Pillow's own
  global ``Image.MAX_IMAGE_PIXELS`` is left alone — the limits are explicit and per call;
* decodes fully (so a truncated or corrupt file fails here, with a one-line message, not later inside
  the model) and takes the first frame of animated images;
* applies the EXIF orientation;
* converts every mode to 8-bit RGB: palette and alpha images are composited on white, CMYK/YCbCr/LAB are
  converted, 16-bit and 32-bit integer / float greyscale is rescaled (not clipped) to 8 bits.

Errors are :class:`ImageError` subclasses whose ``str`` is a one-line message meant for the user;
:mod:`plvm.server` maps them to HTTP 413 / 415 / 422.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO]

#: Formats accepted from users (what Pillow decodes reliably and a phone or browser produces).
ALLOWED_FORMATS = frozenset({"PNG", "JPEG", "MPO", "GIF", "WEBP", "BMP", "TIFF", "PPM", "TGA"})
EXTENSIONS = {
    "JPEG": "jpg",
    "MPO": "jpg",
    "PNG": "png",
    "GIF": "gif",
    "WEBP": "webp",
    "BMP": "bmp",
    "TIFF": "tiff",
    "PPM": "ppm",
    "TGA": "tga",
}
MIME_TYPES = {
    "jpg": "image/jpeg",
    "png": "image/png",
    "gif": "image/gif",
    "webp": "image/webp",
    "bmp": "image/bmp",
    "tiff": "image/tiff",
    "ppm": "image/x-portable-pixmap",
    "tga": "image/x-tga",
}


class ImageError(ValueError):
    """An image cannot be used; ``str(err)`` is a one-line message for the user."""


class ImageTooLargeError(ImageError):
    """The file is too many bytes, or the image too many pixels (HTTP 413)."""


class UnsupportedImageError(ImageError):
    """Not an image, or a format plvm does not accept (HTTP 415)."""


class CorruptImageError(ImageError):
    """Recognised as an image but cannot be decoded: truncated or damaged (HTTP 422)."""


@dataclass(frozen=True)
class ImageLimits:
    """Explicit limits applied to every loaded image.

    Attributes:
        max_bytes: Largest accepted encoded file, in bytes.
        max_pixels: Largest accepted ``width * height`` (checked from the header, before decoding).
        max_side: Longest accepted side in pixels.
        min_side: Shortest accepted side in pixels.
    """

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_side: int = 16_384
    min_side: int = 1


DEFAULT_LIMITS = ImageLimits()


@dataclass(frozen=True)
class LoadedImage:
    """A decoded RGB image together with its original encoded bytes.

    Attributes:
        image: The decoded image, mode ``RGB``, EXIF orientation applied.
        data: The original file bytes (kept by content hash in the concept store).
        sha256: Hex SHA-256 of ``data``.
        format: Pillow's format name of the original (``PNG``, ``JPEG``, …).
        original_mode: The mode before conversion to RGB (``CMYK``, ``I;16``, ``P``, …).
    """

    image: Image.Image
    data: bytes
    sha256: str
    format: str
    original_mode: str

    @property
    def ext(self) -> str:
        """File extension for the original bytes (``png``, ``jpg``, …)."""
        return EXTENSIONS.get(self.format, "img")

    @property
    def mime_type(self) -> str:
        return MIME_TYPES.get(self.ext, "application/octet-stream")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)  # pragma: no cover


def read_limited(source: ImageSource, limits: ImageLimits = DEFAULT_LIMITS, label: str | None = None) -> bytes:
    """The bytes of ``source`` (path, bytes or binary file object), refusing more than ``limits.max_bytes``."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        label = label or str(path)
        try:
            size = path.stat().st_size
            if not path.is_file():
                raise ImageError(f"{label} is not a file")
        except FileNotFoundError:
            raise ImageError(f"no such image file: {label}") from None
        except PermissionError:
            raise ImageError(f"cannot read {label}: permission denied") from None
        if size > limits.max_bytes:
            raise ImageTooLargeError(f"{label} is {_human(size)}; the limit is {_human(limits.max_bytes)}")
        with open(path, "rb") as f:
            data = f.read(limits.max_bytes + 1)
    else:
        data = source.read(limits.max_bytes + 1)
    if len(data) > limits.max_bytes:
        raise ImageTooLargeError(f"{label or 'image'} is larger than the limit of {_human(limits.max_bytes)}")
    return data


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (alpha composited on white, high bit depths rescaled)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "RGBX"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        if mode.startswith("I;16"):
            arr = arr / 257.0
        elif mode == "I":
            # 32-bit integer greyscale: 16-bit sources land here too; scale by the range actually used
            top = float(arr.max()) if arr.size else 0.0
            arr = arr / 257.0 if 255 < top <= 65535 else (arr * (255.0 / top) if top > 65535 else arr)
        else:  # "F": floats, often 0..1
            lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 1.0)
            if 0.0 <= lo and hi <= 1.0:
                arr = arr * 255.0
            elif hi > 255.0 or lo < 0.0:
                arr = (arr - lo) * (255.0 / max(hi - lo, 1e-12))
        grey = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
        return grey.convert("RGB")
    if mode == "CMYK":
        return _cmyk_to_rgb(image)
    return image.convert("RGB")


def _cmyk_to_rgb(image: Image.Image) -> Image.Image:
    """CMYK → sRGB, through the embedded ICC profile when there is one (Pillow's plain formula otherwise)."""
    icc = image.info.get("icc_profile")
    if icc:
        try:
            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            dst = ImageCms.createProfile("sRGB")
            return ImageCms.profileToProfile(image, src, dst, outputMode="RGB")
        except Exception:  # a broken profile must not make the image unusable
            pass
    return image.convert("RGB")


def decode_image(data: bytes, limits: ImageLimits = DEFAULT_LIMITS, label: str = "image") -> LoadedImage:
    """Decode encoded image bytes into a :class:`LoadedImage`, enforcing ``limits``.

    Raises:
        ImageTooLargeError: too many bytes, pixels, or too long a side (checked before decoding).
        UnsupportedImageError: empty, not an image, or a format not in :data:`ALLOWED_FORMATS`.
        CorruptImageError: truncated or damaged data.
    """
    if len(data) > limits.max_bytes:
        raise ImageTooLargeError(f"{label} is {_human(len(data))}; the limit is {_human(limits.max_bytes)}")
    if not data:
        raise UnsupportedImageError(f"{label} is empty (0 bytes)")
    with warnings.catch_warnings():
        # Pillow warns (DecompressionBombWarning) above its global limit; ours is explicit below
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as exc:
            raise ImageTooLargeError(f"{label} has too many pixels (decompression bomb?): {exc}") from None
        except UnidentifiedImageError:
            raise UnsupportedImageError(
                f"{label} is not an image plvm can read (PNG, JPEG, WebP, GIF, BMP, TIFF)"
            ) from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise CorruptImageError(f"{label} is corrupt: {_one_line(exc)}") from None
        fmt = (image.format or "").upper()
        if fmt not in ALLOWED_FORMATS:
            raise UnsupportedImageError(f"{label}: image format {fmt or 'unknown'} is not accepted")
        width, height = image.size
        if width * height > limits.max_pixels:
            raise ImageTooLargeError(
                f"{label} is {width}x{height} = {width * height / 1e6:.1f} megapixels; "
                f"the limit is {limits.max_pixels / 1e6:.1f} megapixels"
            )
        if max(width, height) > limits.max_side:
            raise ImageTooLargeError(f"{label} is {width}x{height}; the longest side allowed is {limits.max_side}")
        if min(width, height) < limits.min_side:
            raise UnsupportedImageError(f"{label} is {width}x{height}; sides must be at least {limits.min_side}")
        original_mode = image.mode
        try:
            image.seek(0)
            image.load()
            ImageOps.exif_transpose(image, in_place=True)  # no second full-size copy
            rgb = to_rgb(image)
            rgb.load()
        except Image.DecompressionBombError as exc:
            raise ImageTooLargeError(f"{label} has too many pixels (decompression bomb?): {exc}") from None
        except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
            raise CorruptImageError(f"{label} is truncated or corrupt: {_one_line(exc)}") from None
    if rgb is image and getattr(image, "n_frames", 1) > 1:
        rgb = rgb.copy()  # detach the first frame from an animated file (single frames are loaded in full)
    return LoadedImage(rgb, bytes(data), sha256_hex(data), fmt, original_mode)


def probe_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from the image header alone (nothing is decoded); ``None`` if unreadable."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as image:
                return image.size
        except Exception:  # decode_image reports what is wrong, with the right error type
            return None


def load_image(source: ImageSource, limits: ImageLimits = DEFAULT_LIMITS, label: str | None = None) -> LoadedImage:
    """Read and decode ``source`` (path, bytes or binary file) safely; see :func:`decode_image`."""
    if label is None:
        label = str(source) if isinstance(source, (str, os.PathLike)) else "image"
    return decode_image(read_limited(source, limits, label), limits, label)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


__all__ = [
    "ALLOWED_FORMATS",
    "CorruptImageError",
    "DEFAULT_LIMITS",
    "ImageError",
    "ImageLimits",
    "ImageTooLargeError",
    "LoadedImage",
    "UnsupportedImageError",
    "decode_image",
    "load_image",
    "probe_size",
    "read_limited",
    "sha256_hex",
    "to_rgb",
]
