"""Probe training on frozen features: heads, losses, schedules, augmentations and the feature cache.

Used by the ``linseg`` (linear-probe segmentation) and ``depth`` (NYUv2 linear depth) task families.
"""
