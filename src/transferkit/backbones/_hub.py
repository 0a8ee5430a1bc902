"""Hugging Face hub access that fails fast offline instead of retrying for minutes."""

from __future__ import annotations

import contextlib
import functools
import os
import socket
from typing import Iterator
from urllib.parse import urlparse

__all__ = ["hub_reachable", "offline_unless_reachable"]


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub's host (``$HF_ENDPOINT`` or huggingface.co) accepts a TCP connection within ``timeout``."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def offline_unless_reachable() -> Iterator[bool]:
    """Within the block the hub client uses only its local cache when the hub cannot be reached.

    Yields whether the hub is reachable.
    """
    reachable = hub_reachable()
    if reachable:
        yield True
        return
    try:
        from huggingface_hub import constants
    except ImportError:
        yield False
        return
    old_const, old_env = constants.HF_HUB_OFFLINE, os.environ.get("HF_HUB_OFFLINE")
    constants.HF_HUB_OFFLINE = True
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield False
    finally:
        constants.HF_HUB_OFFLINE = old_const
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env
