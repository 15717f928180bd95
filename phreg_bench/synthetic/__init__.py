"""A procedural world with known truth (labels and depth) for offline tests and the built-in default.

* :mod:`~phreg_bench.synthetic.scenes` — the deterministic scene generator (``render(index, size, seed)``);
* :mod:`~phreg_bench.synthetic.writers` — the world written in the VOC, ADE20K and NYUv2 layouts;
* :mod:`~phreg_bench.synthetic.closed_form` — closed-form linear probes for quick, deterministic checks;
* :mod:`~phreg_bench.synthetic.proof` — PH-Reg on the planted-artifact ViT vs its twin, Table-3 ablations;
* :mod:`~phreg_bench.synthetic.pipeline` — the built-in default's distillation, evaluation and figures.
"""
