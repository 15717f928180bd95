"""Probe training on frozen features: the protocol, heads, losses, schedules, augmentations and the feature cache.

Used by the ``linseg`` (linear-probe segmentation) and ``depth`` (NYUv2 linear depth) task families
(:mod:`phreg_bench.tasks.linseg`, :mod:`phreg_bench.tasks.depth`); the protocol they share (settings, budget,
fixed views, sampling) is :mod:`~phreg_bench.probes.protocol`. Nothing here imports the task layer.
"""
