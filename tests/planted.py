"""Planted untuned maps shared by the significance-calibration tests (imported as ``planted``)."""

import numpy as np
from scipy import ndimage

SIDE = 224.0  # px, the canvas
LATTICE = 64  # the field is drawn on a LATTICE x LATTICE grid over the canvas


def smooth_field(rng, pos, k, length=30.0, mode="reflect"):
    """(n, k) activations: white noise on the lattice Gaussian-filtered with SD ``length`` px (``mode`` at the
    edges, scipy's; ``"wrap"`` makes fields that wrap around), read at each position ``pos`` (n, 2) px."""
    cell = SIDE / LATTICE
    field = ndimage.gaussian_filter(rng.normal(size=(k, LATTICE, LATTICE)), (0, length / cell, length / cell), mode=mode)
    ix, iy = np.clip((pos / cell).astype(int), 0, LATTICE - 1).T
    return field[:, iy, ix].T
