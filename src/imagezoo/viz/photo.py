"""Any image a user may hand a picture function -> an 8-bit RGB PIL image."""
from __future__ import annotations

import numpy as np
from PIL import Image

from ..data.images import load_image, to_rgb


def as_photo(image) -> Image.Image:
    """A path or URL (decoded as ``classify`` decodes it: EXIF orientation applied, any mode
    made RGB), a PIL image, or an H x W x 3 uint8 array."""
    if isinstance(image, np.ndarray):
        return to_rgb(Image.fromarray(image))
    if isinstance(image, Image.Image):
        return to_rgb(image)
    return load_image(image)
