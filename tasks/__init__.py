"""Task specs, class-name files and prompt templates (data), shipped as ``phreg_bench.task_specs``."""
