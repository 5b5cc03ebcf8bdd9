"""Neuroscience-style probing of vision foundation models; one module per concept.

Design: stimuli, models. Record: hooks, record, names (module names and labels). Analyse: ratemaps, scores,
decoding. Perturb: lesions. Runs: paths (every file of a run folder), params, study (the runner), report,
sweep, sweep_summary. Viewing: plots, widgets, explore. Positive controls: control.
"""

__version__ = "0.1.0"
