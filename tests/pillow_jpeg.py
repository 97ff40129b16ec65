"""Pillow's own JPEG round trip: the independent reference for udm_fast.degrade.jpeg and udm_fast.jpeg."""

import io

import numpy as np
from PIL import Image


def pillow_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    """HWC uint8 -> Pillow JPEG (its defaults: 4:2:0, islow DCT) -> decoded HWC uint8."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"))
