"""Reading images robustly: every mode (grayscale, palette, RGBA, CMYK, 16-bit) becomes 8-bit RGB."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import BadInputError

__all__ = ["IMAGE_EXTENSIONS", "to_rgb", "open_image", "check_image_header", "array_to_image"]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
                              ".pbm", ".jfif"})


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL image to 8-bit RGB.

    Transparent pixels (RGBA, LA, palette or grayscale with a transparency key) are composited onto
    white, as a viewer shows them; 16-bit and float grayscale are rescaled to 0-255 instead of clipped.
    """
    if img.mode == "RGB" and "transparency" not in img.info:
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16"):
            arr = arr / 257.0
        else:
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "P") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def array_to_image(arr: np.ndarray) -> Image.Image:
    """A numpy image ``(H, W)``, ``(H, W, 1|3|4)`` (uint8, or float in [0, 1]) as an RGB PIL image."""
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise BadInputError(f"an image array must be (H, W) or (H, W, 1|3|4), got shape {a.shape}")
    if a.dtype != np.uint8:
        a = a.astype(np.float64)
        scale = 255.0 if a.size and np.nanmax(a) <= 1.0 else 1.0
        a = np.clip(np.nan_to_num(a) * scale + 0.5, 0, 255).astype(np.uint8)
    mode = "L" if a.ndim == 2 else ("RGB" if a.shape[-1] == 3 else "RGBA")
    return to_rgb(Image.fromarray(a, mode))


def open_image(path: str | Path) -> Image.Image:
    """Open, fully decode, EXIF-rotate and convert an image file to RGB.

    Raises:
        BadInputError: the file is missing, not an image, corrupt or truncated (the message names it).
    """
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            return to_rgb(im)
    except FileNotFoundError as e:
        raise BadInputError(f"{path}: file not found", [(str(path), "file not found")]) from e
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError, SyntaxError) as e:
        reason = _reason(e)
        raise BadInputError(f"{path}: cannot read image ({reason})", [(str(path), reason)]) from e


def check_image_header(path: str | Path) -> str | None:
    """A cheap check that reads only the file header; returns the reason it is not an image, or None."""
    try:
        with Image.open(path) as im:
            im.size  # noqa: B018 - header parsed by open
        return None
    except FileNotFoundError:
        return "file not found"
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError, SyntaxError) as e:
        return _reason(e)


def _reason(e: BaseException) -> str:
    if isinstance(e, UnidentifiedImageError):
        return "not an image file, or a format Pillow cannot read"
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:160]
