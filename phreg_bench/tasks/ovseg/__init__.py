"""Open-vocabulary (zero-shot) semantic segmentation: the ``ovseg`` task family and its harness.

==========  ====================================================================================
``family``  the ``ovseg`` task family: dataset, protocol settings, templates, metrics, sharding
``harness`` the mmseg-free zero-shot harness: resize, sliding windows, cosine logits, classification
``text``    the text side: template files, synonym class files, class embeddings and their cache
==========  ====================================================================================

The image geometry the harness shares with the probes (resizing, window layout, padding) is
:mod:`phreg_bench.geometry`; the paper's Table 1 numbers are in :mod:`phreg_bench.reported`.
"""
