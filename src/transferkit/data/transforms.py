"""Data transforms that return a new :class:`~transferkit.data.sources.DataSource` (the original is unchanged).

A transformed source loads its items transformed and gives them new content keys, so the feature cache
never mixes the features of the original items with those of the transformed ones.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import DataError
from .sources import DataSource

__all__ = ["to_grayscale", "GrayscaleSource"]


class GrayscaleSource(DataSource):
    """A source whose images load as 3-channel gray (``L`` luminance copied to R, G and B).

    Items stay as they are (paths are read lazily); only :meth:`load` and the item keys differ.
    """

    def load(self, i: int) -> Any:
        return super().load(i).convert("L").convert("RGB")

    def _item_bytes(self, item: Any) -> bytes:
        return b"grayscale|" + super()._item_bytes(item)

    def subset(self, index: Sequence[int] | np.ndarray) -> "GrayscaleSource":
        s = super().subset(index)
        return GrayscaleSource(s.items, s.kind, s.labels, s.domains, name=s.name, origin=s.origin,
                               skipped=s.skipped, _keys=s._keys)


def to_grayscale(source: DataSource) -> DataSource:
    """The same images in gray, as 3 channels so every image backbone still takes them.

    The colour-vs-grayscale experiment in one call: labels, domains and order are kept; the item keys
    change (so cached features of the colour images are never reused); the name gets a ``-gray`` suffix.

    Raises:
        DataError: ``source`` holds texts.
    """
    if source.modality != "image":
        raise DataError(f"{source.origin or source.name} holds {source.modality} data; to_grayscale needs images")
    if isinstance(source, GrayscaleSource):
        return source
    return GrayscaleSource(list(source.items), source.kind, source.labels, source.domains,
                           name=f"{source.name}-gray", origin=f"grayscale({source.origin or source.name})",
                           skipped=list(source.skipped))
