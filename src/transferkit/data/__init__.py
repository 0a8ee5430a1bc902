"""Data sources, built-in datasets and splits."""

from .builtin import DATASETS, DatasetSpec, list_datasets, load_builtin, register_dataset
from .images import array_to_image, open_image, to_rgb
from .load import collect_inputs, load_data
from .sources import DataSource, from_arrays, from_folder, from_table
from .splits import Splits, make_splits

__all__ = ["DATASETS", "DataSource", "DatasetSpec", "Splits", "array_to_image", "collect_inputs", "from_arrays",
           "from_folder", "from_table", "list_datasets", "load_builtin", "load_data", "make_splits", "open_image",
           "register_dataset", "to_rgb"]
