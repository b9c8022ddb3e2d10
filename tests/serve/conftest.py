"""The zoo of bad requests and the image helpers shared by the service's tests (they are the
bench's own: `imgclf.bench.serve`)."""

from __future__ import annotations

from imgclf.bench.serve import image_bytes, request_zoo
from imgclf.serve.app import Limits

LIMITS = Limits(max_body_mb=1, max_images=4)  # what the bad requests are sized against
BAD_REQUESTS = request_zoo(LIMITS)

__all__ = ["BAD_REQUESTS", "LIMITS", "image_bytes"]
