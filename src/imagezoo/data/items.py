"""One input -> its model input, its error, and what the decoder said: the step every loader
shares (the DataLoader's workers, and the PyTorch-free path of ``tasks/light_classify.py``).

Nothing an input does escapes: a decoder's exception is its error (``load_image``), and so is
one from preprocessing (an image too small or too odd for the transform)."""
from __future__ import annotations

from typing import Any, Callable

from ..errors import ImageDecodeError
from .decode_guard import preprocess_reason
from .images import load_image


def prepare_item(source: str, transform: Callable, spec, draft_size: int | None = None,
                 index: int | None = None) -> tuple[Any, str | None, list[str]]:
    """(``transform(image, spec)`` or None, the error or None, the decoder's notes).
    A transform marked ``takes_index`` (augmentation) also gets the input's position."""
    notes: list[str] = []
    try:
        image = load_image(source, draft_size=draft_size, notes=notes)
    except ImageDecodeError as error:
        return None, str(error), notes
    try:
        if getattr(transform, "takes_index", False):
            return transform(image, spec, index), None, notes
        return transform(image, spec), None, notes
    except Exception as error:  # noqa: BLE001 - one input's problem, never the run's
        return None, f"{source}: {preprocess_reason(error)}", notes


def draft_size(card, draft: bool) -> int | None:
    """The side libjpeg's draft mode may reduce a JPEG to and still cover the card's resize."""
    return (card.preprocess.resize or card.preprocess.crop) if draft else None
