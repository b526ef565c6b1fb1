"""Images to uint8 RGB arrays with Pillow, refusing oversized ones before decoding them.

Why Pillow: maintained, fuzzed, and its lazy ``Image.open`` reads only the header, so width and
height are checked against the pixel limit before a single pixel is decoded (a 100k x 100k PNG
of a few hundred bytes is refused at once). Pillow's own decompression-bomb guard
(``Image.MAX_IMAGE_PIXELS``) stays as a second line. ``formats=`` restricts which decoders may run
at all, so an unexpected TIFF or PSD never reaches a parser.

Conversion follows transformers' ``convert_to_rgb``: EXIF orientation applied, transparency
composited over white, first frame of an animation.
"""

from __future__ import annotations

import io
from collections.abc import Collection

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ...errors import MediaDecodeError, MediaError, MediaTooLargeError, UnsupportedMediaError

IMAGE_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "GIF", "BMP"})  # Pillow's format names


def decode_image(data: bytes, *, max_pixels: int, formats: Collection[str] = IMAGE_FORMATS) -> np.ndarray:
    """Encoded image bytes as uint8 RGB ``[H, W, 3]``.

    Raises:
        MediaTooLargeError: more than ``max_pixels`` (from the header; nothing decoded).
        UnsupportedMediaError: not one of ``formats``.
        MediaDecodeError: corrupt or truncated.
    """
    try:
        with Image.open(io.BytesIO(data), formats=sorted(formats)) as img:
            check_pixels(img.width, img.height, max_pixels)  # from the header, before any pixel
            img.seek(0)
            img.load()
            return _to_rgb(img)
    except MediaError:
        raise
    except Image.DecompressionBombError as exc:
        raise MediaTooLargeError(
            "the image's pixel count", float("inf"), max_pixels, "send a smaller image"
        ) from exc
    except UnidentifiedImageError as exc:
        raise UnsupportedMediaError(
            f"the image is not {', '.join(sorted(formats))} (or it is corrupt); convert it to PNG or JPEG"
        ) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise MediaDecodeError(f"the image is corrupt or truncated ({exc}); re-export it") from exc


def rgb_from_pil(img: Image.Image, max_pixels: int) -> np.ndarray:
    check_pixels(img.width, img.height, max_pixels)
    return _to_rgb(img)


def rgb_from_array(array: np.ndarray, max_pixels: int) -> np.ndarray:
    """uint8 ``[H, W, 3]`` as is, ``[H, W]`` gray widened to RGB."""
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise UnsupportedMediaError(
            "an image array must be uint8 [height, width, 3] (or [height, width] gray), "
            f"got {array.dtype} {list(array.shape)}"
        )
    if 0 in array.shape:
        raise MediaDecodeError("the image array is empty; send an image with pixels")
    check_pixels(array.shape[1], array.shape[0], max_pixels)
    return np.repeat(array[:, :, None], 3, axis=2) if array.ndim == 2 else array


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise MediaTooLargeError(
            f"the image's pixel count ({width}x{height})",
            width * height,
            max_pixels,
            "downscale it before sending (the encoder resizes large images anyway)",
        )


def _to_rgb(img: Image.Image) -> np.ndarray:
    img = ImageOps.exif_transpose(img) or img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)
