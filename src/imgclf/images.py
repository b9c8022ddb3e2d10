"""Decoding one image file into the RGB uint8 array a model takes.

Training, evaluation and prediction all go through `decode_image`, so an image
is converted the same way everywhere: first frame of animations, any mode
(grayscale, RGBA, palette, CMYK, 16-bit) to 8-bit RGB, resized to the model's
input size. Files that are not decodable images raise `BadImage`.
"""

from __future__ import annotations

import warnings

import numpy as np
from PIL import Image, ImageFile

# Refuse decompression bombs: a tiny file that expands to gigapixels.
MAX_IMAGE_PIXELS = 64_000_000  # pixels (e.g. 8000 x 8000)
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not a grey half-image

RESAMPLE = Image.Resampling.BILINEAR


class BadImage(Exception):
    """The file is not a usable image (the message says why)."""


def decode_image(path: str, size: tuple[int, int]) -> np.ndarray:
    """Return the image at `path` as a (height, width, 3) uint8 array of the given size."""
    height, width = size
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # Palette images with transparency and similar oddities warn; they still decode fine.
            warnings.simplefilter("ignore", UserWarning)
            with Image.open(path) as img:
                img.seek(0)  # first frame of animated GIF/PNG/WebP
                if img.format == "JPEG":
                    img.draft("RGB", (width, height))  # cheap DCT downscale for large JPEGs
                img.load()
                rgb = _to_rgb(img)
                if rgb.size != (width, height):
                    rgb = rgb.resize((width, height), RESAMPLE)
                array = np.asarray(rgb, dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(f"too large (decompression bomb guard): {exc}") from None
    except FileNotFoundError:
        raise BadImage("missing file or broken link") from None
    except PermissionError:
        raise BadImage("permission denied") from None
    except Image.UnidentifiedImageError:
        raise BadImage("not an image") from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as exc:
        raise BadImage(f"cannot decode ({exc})") from None
    if array.shape != (height, width, 3):
        raise BadImage(f"unexpected decoded shape {array.shape}")
    return array


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16/32-bit grayscale: scale the real range to 0-255 instead of clipping at 255.
        values = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(values.max()), 1.0)
        if img.mode == "I" and values.max() <= 65535:
            top = 65535.0 if values.max() > 255 else 255.0
        gray = np.clip(values / top * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        # Composite on black; identical to dropping alpha for opaque images.
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")
