"""Task families (code); the task specs they run are YAML under the repository's ``tasks/`` folder, shipped as
``phreg_bench.task_specs``.

=================  ===================================================================================
``base``           ``TaskFamily``, ``RunContext``, ``TaskOutcome`` (``TaskSpec`` re-exported from ``specs``)
``specs``          the YAML reader: task specs, includes, suites, class and template files
``catalogue``      the ``TASK_FAMILIES``, ``TASKS`` and ``SUITES`` registries
``sharding``       rank-0-first work and message gathering under ``torchrun``
``ovseg/``         open-vocabulary segmentation: the family, its zero-shot harness and text side
``probe_family``   the base of the probe families (the run's budget is part of the preset)
``linseg``         linear-probe semantic segmentation (Table 2)
``depth``          NYUv2 linear depth (Table 2)
=================  ===================================================================================

The probe protocol shared by ``linseg`` and ``depth`` is :mod:`phreg_bench.probes.protocol`; the built-in
``synthetic`` family lives with the synthetic world (:mod:`phreg_bench.synthetic.family`); the settings
machinery of every family is :mod:`phreg_bench.protocol_settings`.
"""
