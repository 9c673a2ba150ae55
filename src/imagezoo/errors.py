"""The one exception family of imagezoo.

Every error a user can cause with bad input is an ``ImagezooError``; the CLI prints its
message on one line and exits non-zero instead of showing a traceback.
"""


class ImagezooError(Exception):
    """Base class of every error imagezoo raises on purpose."""


class ImageDecodeError(ImagezooError):
    """An input could not be read or decoded as an image; the message names the input."""


class WeightsError(ImagezooError):
    """A weight file could not be read (missing, corrupt, refused as unsafe)."""


class WeightsMismatchError(WeightsError):
    """A weight file does not fit the model: names the missing, unexpected and misshapen tensors."""

    def __init__(self, source: str, missing: list[str], unexpected: list[str],
                 misshapen: list[tuple[str, tuple, tuple]]):
        self.source = source
        self.missing = missing
        self.unexpected = unexpected
        self.misshapen = misshapen
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s): {_shorten(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} tensor(s): {_shorten(unexpected)}")
        if misshapen:
            shown = [f"{name} (file {tuple(got)}, model {tuple(want)})" for name, got, want in misshapen]
            parts.append(f"{len(misshapen)} tensor(s) of the wrong shape: {_shorten(shown)}")
        super().__init__(f"{source} does not fit the model: " + "; ".join(parts))


class UnknownModelError(ImagezooError):
    """A model name that the registry does not know."""


class WeightsNotAvailableError(ImagezooError):
    """The model has no weights that can be loaded without the user naming a file."""


class DatasetError(ImagezooError):
    """A labelled data set (mapping file, class folders) is malformed."""


def _shorten(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    if len(names) > limit:
        shown += f", … ({len(names) - limit} more)"
    return shown
