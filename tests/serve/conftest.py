"""Images and the zoo of bad requests shared by the service's tests."""

from __future__ import annotations

import io
import zlib

import numpy as np
from PIL import Image

from imgclf.serve.app import Limits

LIMITS = Limits(max_body_mb=1, max_images=4)  # what the bad requests below are sized against


def image_bytes(color=(200, 40, 40), size=(16, 16), fmt="PNG", mode="RGB") -> bytes:
    rng = np.random.default_rng(0)
    pixels = np.clip(np.array(color) + rng.normal(0, 20, (*size[::-1], 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, fmt)
    return buffer.getvalue()


def png_bomb(side: int = 20000) -> bytes:
    """A valid PNG header claiming side x side pixels (400 Mpx), a few hundred bytes long."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
    header = side.to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) \
        + chunk(b"IEND", b"")


def _text_named_jpg():
    return {"files": ("photo.jpg", b"this is not a picture at all", "image/jpeg")}


BAD_REQUESTS = {
    "no files field": (dict(data={"top_k": "1"}), 422),
    "json body": (dict(json={"files": []}), 422),
    "url-encoded body": (dict(data={"files": "abc"}), 422),
    "empty file": (dict(files={"files": ("e.png", b"", "image/png")}), 400),
    "text named .jpg": (dict(files=_text_named_jpg()), 415),
    "html file": (dict(files={"files": ("a.html", b"<html><body>x</body></html>", "text/html")}), 415),
    "svg image": (dict(files={"files": ("a.svg", b'<svg xmlns="http://www.w3.org/2000/svg"/>', "image/svg+xml")}),
                  415),
    "truncated jpeg": (dict(files={"files": ("t.jpg", image_bytes(fmt="JPEG")[:200], "image/jpeg")}), 422),
    "png cut inside its header": (dict(files={"files": ("h.png", image_bytes()[:40], "image/png")}), 415),
    "decompression bomb": (dict(files={"files": ("bomb.png", png_bomb(), "image/png")}), 413),
    "too many images": (dict(files=[("files", (f"{i}.png", image_bytes(), "image/png")) for i in range(5)]), 400),
    "body too large": (dict(files={"files": ("big.png", b"\x89PNG" + bytes(2 * 1024 * 1024), "image/png")}), 413),
    "top_k zero": (dict(files={"files": ("r.png", image_bytes(), "image/png")}, data={"top_k": "0"}), 422),
    "top_k negative": (dict(files={"files": ("r.png", image_bytes(), "image/png")}, data={"top_k": "-2"}), 422),
    "top_k not a number": (dict(files={"files": ("r.png", image_bytes(), "image/png")}, data={"top_k": "abc"}), 422),
    "one good one bad": (dict(files=[("files", ("r.png", image_bytes(), "image/png")),
                                     ("files", ("x.png", b"GIF89a-broken", "image/png"))]), 415),
}


