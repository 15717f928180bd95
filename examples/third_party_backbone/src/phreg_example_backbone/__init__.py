"""A third-party backbone for phreg-bench: a small ViT written from scratch, exposed through the contract.

See ``README.md`` next to ``pyproject.toml`` for how it is registered.
"""

from phreg_example_backbone.factory import build

__all__ = ["build"]
