"""Neuroscience-style probing of vision foundation models.

One module per concept:

- :mod:`helpers.stimuli`  -- synthetic stimulus sets (Design)
- :mod:`helpers.models`   -- model loading and zero-shot classification (Design)
- :mod:`helpers.hooks`    -- read and edit module outputs by name, handles always removed
- :mod:`helpers.record`   -- hook-based recording to disk (Record)
- :mod:`helpers.ratemaps` -- activation maps over the visual field (Analyse)
- :mod:`helpers.scores`   -- spatial information, grid and border scores (Analyse)
- :mod:`helpers.lesions`  -- reversible layer and neuron lesions (Perturb)
- :mod:`helpers.plots`    -- figures
- :mod:`helpers.widgets`  -- ipywidgets explorers
- :mod:`helpers.study`    -- run folders, parameters and the papermill runner
"""

__version__ = "0.1.0"
