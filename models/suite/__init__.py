"""The default-suite recipe: a Python-code target and draft trained here (see recipe.py).

Entry point: `run_suite(preset, out)`, or `specserve train suite --preset {gpu,cpu,cpu-tiny} --out DIR`.
"""

from specserve.models.suite.configs import PRESETS, Preset, get_preset

__all__ = ["PRESETS", "Preset", "get_preset"]
