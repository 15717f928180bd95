"""The synthetic world: a procedural world with known truth (labels, depth, planted artifacts) for offline tests
and the built-in default.

* :mod:`~phreg_bench.synthetic.scenes` — the deterministic scene generator (``render(index, size, seed)``,
  ``render_batch`` for tensors);
* :mod:`~phreg_bench.synthetic.planted` — the planted-artifact ViT (``planted-vit``) and its artifact-free twin;
* :mod:`~phreg_bench.synthetic.family` — the built-in ``synthetic`` task family (class-prototype probe);
* :mod:`~phreg_bench.synthetic.writers` — the world written to disk in the VOC, ADE20K and NYUv2 layouts;
* :mod:`~phreg_bench.synthetic.closed_form` — closed-form linear probes for quick, deterministic checks;
* :mod:`~phreg_bench.synthetic.proof` — PH-Reg on the planted-artifact ViT vs its twin, Table-3 ablations;
* :mod:`~phreg_bench.synthetic.pipeline` — the built-in default's distillation, evaluation and figures
  (``phreg-bench run`` with no arguments: :mod:`phreg_bench.cli._default`).
"""
