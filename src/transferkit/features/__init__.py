"""Feature extraction and the on-disk feature cache."""

from .store import FeatureStore, Features, default_cache_dir, default_num_workers, resolve_device

__all__ = ["FeatureStore", "Features", "default_cache_dir", "default_num_workers", "resolve_device"]
