"""Synthetic stimulus sets: the Design stage.

The blog's dataset is 3000 black circles on a white canvas, diameter uniform in
[20, 80] px, centres covering the whole visual field. A set is stored as a small
manifest (one row per stimulus: centre x, y, diameter, shape, colour) plus a
SHA-256 content hash; images are rendered on demand and pixel-identically from
the manifest (3000 RGB images would be 450 MB on disk).

Coordinates are image pixels: ``x`` grows to the right, ``y`` grows downwards,
pixel ``(row i, col j)`` covers ``[j, j+1) x [i, i+1)`` and is painted when its
centre ``(j + 0.5, i + 0.5)`` lies inside the shape. Rendering is plain numpy,
so it does not depend on an image library's anti-aliasing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from helpers.checks import check_int

#: Version of the rendering rules; part of the content hash.
RENDER_VERSION = 1

SHAPES = ("circle", "square", "triangle", "rectangle")

#: Named RGB colours (0-255).
COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "grey": (128, 128, 128),
    "red": (220, 20, 20),
    "green": (20, 160, 20),
    "blue": (20, 20, 220),
}

COLUMNS = ("x", "y", "diameter", "shape", "colour")


@dataclass(frozen=True)
class StimulusSet:
    """A seeded stimulus set: parameters plus one row per stimulus.

    Attributes:
    x, y : (n,) float arrays — Shape centres in canvas pixels (x right, y down).
    diameter : (n,) float array — Size in pixels: circle diameter, square side, triangle circumscribed diameter,
        rectangle width (height is half of it).
    shape, colour : (n,) str arrays
    params : dict — Everything :func:`make_stimuli` was called with.
    hash : str — SHA-256 over the parameters, the rows and :data:`RENDER_VERSION`.
    """

    x: np.ndarray
    y: np.ndarray
    diameter: np.ndarray
    shape: np.ndarray
    colour: np.ndarray
    params: dict
    hash: str

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def canvas(self) -> int:
        """Canvas side in pixels."""
        return int(self.params["canvas"])

    @property
    def positions(self) -> np.ndarray:
        """(n, 2) float array of (x, y) centres in canvas pixels."""
        return np.stack([self.x, self.y], axis=1)

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """(xmin, xmax, ymin, ymax) of the visual field in canvas pixels."""
        c = float(self.canvas)
        return (0.0, c, 0.0, c)

    def rows(self) -> list[dict]:
        """The manifest rows as dicts."""
        return [
            {"x": float(a), "y": float(b), "diameter": float(d), "shape": str(s), "colour": str(c)}
            for a, b, d, s, c in zip(self.x, self.y, self.diameter, self.shape, self.colour)
        ]


def _content_hash(params: dict, x, y, d, shape, colour) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"render_version": RENDER_VERSION, **params}, sort_keys=True).encode())
    for arr in (x, y, d):
        h.update(np.ascontiguousarray(arr, dtype="<f8").tobytes())
    h.update("\n".join(shape).encode())
    h.update(b"|")
    h.update("\n".join(colour).encode())
    return h.hexdigest()


def make_stimuli(
    n: int = 3000,
    *,
    seed: int = 0,
    diameter: tuple[float, float] = (20.0, 80.0),
    shapes: Sequence[str] = ("circle",),
    colours: Sequence[str] = ("black",),
    background: str = "white",
    canvas: int = 224,
    inside: bool = False,
) -> StimulusSet:
    """Draw a seeded stimulus set of ``n`` shapes (blog: 3000 black circles, diameter 20-80 px, white).

    ``diameter`` (min, max) px, uniform; ``shapes`` from :data:`SHAPES` and ``colours``
    from :data:`COLOURS`, uniform per stimulus; ``canvas`` px per side (the model's
    input size keeps positions in its input frame). Centres cover ``[0, canvas)^2``
    uniformly (shapes clipped at the edge), or keep the shape whole with
    ``inside=True``. Same parameters give identical rows, pixels and hash.
    """
    check_int("n", n, 1)
    check_int("canvas", canvas, 8)
    try:
        dmin, dmax = (float(v) for v in diameter)
    except (TypeError, ValueError):
        raise ValueError(f"diameter must be a (min, max) pair of numbers, got {diameter!r}") from None
    if not (0 < dmin <= dmax <= canvas):
        raise ValueError(
            f"diameter range must satisfy 0 < min <= max <= canvas ({canvas} px), got ({dmin}, {dmax})"
        )
    shapes = [shapes] if isinstance(shapes, str) else list(shapes)
    colours = [colours] if isinstance(colours, str) else list(colours)
    bad = [s for s in shapes if s not in SHAPES]
    if not shapes or bad:
        raise ValueError(f"shapes must be a non-empty subset of {SHAPES}, got {shapes!r}")
    bad = [c for c in colours if c not in COLOURS]
    if not colours or bad:
        raise ValueError(f"colours must be a non-empty subset of {tuple(COLOURS)}, got {colours!r}")
    if background not in COLOURS:
        raise ValueError(f"background must be one of {tuple(COLOURS)}, got {background!r}")
    check_int("seed", seed)

    rng = np.random.default_rng(int(seed))
    d = rng.uniform(dmin, dmax, size=int(n))
    if inside:
        half = d / 2.0
        x = rng.uniform(half, canvas - half)
        y = rng.uniform(half, canvas - half)
    else:
        x = rng.uniform(0.0, canvas, size=int(n))
        y = rng.uniform(0.0, canvas, size=int(n))
    shape = np.asarray(shapes)[rng.integers(0, len(shapes), size=int(n))]
    colour = np.asarray(colours)[rng.integers(0, len(colours), size=int(n))]
    params = {
        "n": int(n),
        "seed": int(seed),
        "diameter": [dmin, dmax],
        "shapes": shapes,
        "colours": colours,
        "background": background,
        "canvas": int(canvas),
        "inside": bool(inside),
    }
    return StimulusSet(x, y, d, shape, colour, params, _content_hash(params, x, y, d, shape, colour))


# --------------------------------------------------------------------------- manifest


def save_manifest(stim: StimulusSet, path: str | Path) -> Path:
    """Write the manifest (parameters, hash, rows) as JSON.

    Floats are written with ``repr`` precision, so :func:`load_manifest` restores
    identical rows and hash.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "render_version": RENDER_VERSION,
        "hash": stim.hash,
        "params": stim.params,
        "columns": list(COLUMNS),
        "rows": [[r[c] for c in COLUMNS] for r in stim.rows()],
    }
    path.write_text(json.dumps(doc))
    return path


def load_manifest(path: str | Path) -> StimulusSet:
    """Read a manifest written by :func:`save_manifest` and verify its hash.

    Raises:
    FileNotFoundError — No manifest at ``path`` (run 01_design first).
    ValueError — The stored hash does not match the rows (file edited or corrupted).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no stimulus manifest at {path}; run notebooks/01_design.ipynb first")
    doc = json.loads(path.read_text())
    if doc.get("render_version") != RENDER_VERSION:
        raise ValueError(
            f"{path} was written with render_version {doc.get('render_version')}, this code renders "
            f"version {RENDER_VERSION}; regenerate the stimuli"
        )
    cols = doc["columns"]
    rows = doc["rows"]
    get = {c: [r[i] for r in rows] for i, c in enumerate(cols)}
    x = np.asarray(get["x"], dtype=float)
    y = np.asarray(get["y"], dtype=float)
    d = np.asarray(get["diameter"], dtype=float)
    shape = np.asarray(get["shape"], dtype=str)
    colour = np.asarray(get["colour"], dtype=str)
    params = doc["params"]
    h = _content_hash(params, x, y, d, shape, colour)
    if h != doc["hash"]:
        raise ValueError(f"stimulus manifest {path} fails its content hash (stored {doc['hash'][:12]}, got {h[:12]})")
    return StimulusSet(x, y, d, shape, colour, params, h)


# --------------------------------------------------------------------------- rendering


def _mask(shape: str, cx: float, cy: float, d: float, canvas: int) -> np.ndarray:
    """Boolean (canvas, canvas) mask of pixels whose centre lies inside the shape."""
    c = np.arange(canvas) + 0.5
    X = c[None, :]
    Y = c[:, None]
    r = d / 2.0
    if shape == "circle":
        return (X - cx) ** 2 + (Y - cy) ** 2 <= r * r
    if shape == "square":
        return (np.abs(X - cx) <= r) & (np.abs(Y - cy) <= r)
    if shape == "rectangle":
        return (np.abs(X - cx) <= r) & (np.abs(Y - cy) <= r / 2.0)
    if shape == "triangle":
        # Upward equilateral triangle inscribed in the circle of diameter d.
        top = cy - r
        base = cy + r / 2.0
        half_w = r * np.sqrt(3) / 2.0
        t = (Y - top) / (base - top)  # 0 at apex, 1 at base
        return (Y >= top) & (Y <= base) & (np.abs(X - cx) <= t * half_w)
    raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")


def _background(stim: StimulusSet) -> np.ndarray:
    """The empty canvas, (canvas, canvas, 3) uint8 in the background colour."""
    img = np.empty((stim.canvas, stim.canvas, 3), dtype=np.uint8)
    img[:] = COLOURS[stim.params["background"]]
    return img


def render(stim: StimulusSet, i: int) -> np.ndarray:
    """Render stimulus ``i`` as an RGB ``uint8`` array of shape (canvas, canvas, 3)."""
    n = len(stim)
    if not (-n <= i < n):
        raise IndexError(f"stimulus index {i} out of range for a set of {n}")
    img = _background(stim)
    m = _mask(str(stim.shape[i]), float(stim.x[i]), float(stim.y[i]), float(stim.diameter[i]), stim.canvas)
    img[m] = COLOURS[str(stim.colour[i])]
    return img


def render_pil(stim: StimulusSet, i: int):
    """Stimulus ``i`` as a ``PIL.Image`` (RGB)."""
    from PIL import Image

    return Image.fromarray(render(stim, i), mode="RGB")


def blank_input(stim: StimulusSet, preprocess):
    """The stimulus set's canvas with no shape (background only), preprocessed: (1, 3, H, W).

    The control image of the zero-shot task ("an empty image")."""
    from PIL import Image

    return preprocess(Image.fromarray(_background(stim), mode="RGB")).unsqueeze(0)


def mean_image(stim: StimulusSet, *, progress: bool = False) -> np.ndarray:
    """Mean over all stimuli of the rendered images: (canvas, canvas, 3) float in [0, 255].

    Accumulated one image at a time, so memory does not grow with ``n``.
    """
    from tqdm.auto import tqdm

    acc = np.zeros((stim.canvas, stim.canvas, 3), dtype=np.float64)
    for i in tqdm(range(len(stim)), desc="composite", disable=not progress):
        acc += render(stim, i)
    return acc / len(stim)


# --------------------------------------------------------------------------- model input


def _find_transform(preprocess, cls_name: str):
    for t in getattr(preprocess, "transforms", [preprocess]):
        if type(t).__name__ == cls_name:
            return t
    return None


def _size_of(v) -> tuple[int, int] | int:
    if isinstance(v, (list, tuple)):
        return (int(v[0]), int(v[-1])) if len(v) > 1 else int(v[0])
    return int(v)


def input_frame_transform(canvas: int, preprocess) -> tuple[float, float, int]:
    """How canvas pixels map into the model's input frame.

    Reads open_clip's evaluation transform (``Resize`` of the shortest side,
    then ``CenterCrop``). A square canvas is scaled by ``s = resize / canvas``
    and the crop removes ``offset`` pixels on each side.

    Returns:
    scale : float
    offset : float — Pixels removed on the left/top by the centre crop (after scaling).
    input_size : int — Side of the model input.

    Raises:
    ValueError — A transform this function does not understand (non-square resize or crop, or no resize/crop at all);
        we refuse rather than guess positions.
    """
    resize = _find_transform(preprocess, "Resize")
    crop = _find_transform(preprocess, "CenterCrop")
    if resize is None or crop is None:
        raise ValueError("preprocess must contain torchvision Resize and CenterCrop to map stimulus positions")
    rs = _size_of(resize.size)
    cs = _size_of(crop.size)
    if isinstance(rs, tuple):
        if rs[0] != rs[1]:
            raise ValueError(f"non-square Resize {rs} is not supported for position mapping")
        rs = rs[0]
    if isinstance(cs, tuple):
        if cs[0] != cs[1]:
            raise ValueError(f"non-square CenterCrop {cs} is not supported for position mapping")
        cs = cs[0]
    scale = rs / float(canvas)
    # torchvision's center_crop: top = int(round((h - ch) / 2.0))
    offset = float(int(round((rs - cs) / 2.0)))
    return scale, offset, int(cs)


def positions_in_input(stim: StimulusSet, preprocess) -> np.ndarray:
    """(n, 2) stimulus centres in the model's input frame (pixels).

    Identical to :attr:`StimulusSet.positions` when the canvas equals the model
    input size.
    """
    scale, offset, _ = input_frame_transform(stim.canvas, preprocess)
    return stim.positions * scale - offset


def positions_for_input_size(stim: StimulusSet, input_size: int) -> np.ndarray:
    """Centres in the input frame of an open_clip model with square input ``input_size``.

    Uses open_clip's own evaluation transform for that size, so later stages can
    map positions without building the model.
    """
    import open_clip

    return positions_in_input(stim, open_clip.image_transform(int(input_size), is_train=False))


class StimulusDataset:
    """A torch-style Dataset of preprocessed stimuli.

    ``ds[i]`` returns ``(tensor (3, S, S), i)``; :attr:`positions` holds every
    stimulus's centre in the model's input frame. Defined here (not in a
    notebook) so spawn-based DataLoader workers can import it.
    """

    def __init__(self, stim: StimulusSet, preprocess, indices: Sequence[int] | None = None):
        self.stim = stim
        self.preprocess = preprocess
        self.indices = np.arange(len(stim)) if indices is None else np.asarray(indices, dtype=int)
        self.positions = positions_in_input(stim, preprocess)

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def __getitem__(self, k: int):
        i = int(self.indices[k])
        return self.preprocess(render_pil(self.stim, i)), i


def check_batch_size(batch_size: int) -> int:
    """``batch_size`` as an int, or ValueError naming it unless it is a positive integer (bools refused)."""
    check_int("batch_size", batch_size, 1)
    return int(batch_size)


def iter_batches(
    stim: StimulusSet,
    preprocess,
    batch_size: int = 64,
    *,
    indices: Sequence[int] | None = None,
    num_workers: int = 0,
) -> Iterator[tuple["torch.Tensor", np.ndarray]]:
    """Yield ``(images (B, 3, S, S) float32, stimulus indices (B,))`` in order.

    Parameters:
    batch_size : int — > 0.
    indices : sequence of int, optional — Subset (and order) of stimuli; default all.
    num_workers : int — DataLoader worker processes for rendering (0 = in-process).
    """
    import torch
    from torch.utils.data import DataLoader

    ds = StimulusDataset(stim, preprocess, indices)
    loader = DataLoader(ds, batch_size=check_batch_size(batch_size), shuffle=False, num_workers=num_workers)
    for images, idx in loader:
        yield images, idx.numpy() if isinstance(idx, torch.Tensor) else np.asarray(idx)
