"""transferkit: transfer learning for images and text, done right.

The public API is small: estimators, runs, and the registries.
"""

__version__ = "0.1.0"
