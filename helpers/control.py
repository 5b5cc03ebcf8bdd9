"""Positive controls: small CLIPs trained here, on synthetic shapes, on the CPU.

A random CLIP is a degenerate classifier, so no stage of the study has been
seen on a network that really sees. This module trains two small CLIPs from
scratch on image–caption pairs drawn from the study's own stimulus renderer
(:mod:`helpers.stimuli`): a network known to solve the task, built without a
download.

Architecture
    ``ViT-B-32-control`` (``helpers/model_configs/ViT-B-32-control.json``,
    registered with open_clip by :func:`register_model_config`): the token
    geometry of ViT-B/32 (224-px input, 32-px patches, 7x7 patches + class
    token = 50 tokens, 12 visual residual blocks) at width 128, and a 4-block,
    width-128 text tower with open_clip's own tokenizer (CLIP BPE, context 24).
Data
    Circles, squares and triangles in black, red, green or blue on white,
    diameter uniform in 20–80 px, centres anywhere on the 224-px canvas (the
    blog's distribution), plus empty (all-white) images.
Captions and loss
    Symmetric InfoNCE (Radford et al. 2021) between a batch's images and the
    whole caption :func:`vocabulary` of the variant ("a circle", "a red
    square", "an empty image"; ``spatial`` adds "... in the lower left" for
    the 3x3 cell of the centre), with multi-positive soft targets: a caption
    is a positive of every image it truly describes. The false captions of
    the vocabulary are hard negatives in the sense of NegCLIP (Yuksekgonul et
    al. 2023): "a red circle in the upper left" competes with "... in the
    lower left" for every red circle, so shape, colour and location must each
    be seen.
    A location term (:func:`location_loss`) weighs the location negatives on
    their own, and the visual positional embedding starts 30x larger than
    open_clip's: without both, the spatial variant stayed location-blind.
    A shape term (:func:`shape_loss`, both variants) does the same for the
    shape negatives, which the location negatives otherwise outnumber.

Named weights ``control-spatial`` and ``control-nonspatial`` (:data:`WEIGHTS`)
are committed under ``weights/`` in float16 safetensors with a model card each;
``make control-models`` retrains both (``python -m helpers.control``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from helpers.paths import REPO_ROOT

#: open_clip model name of the control architecture.
CONTROL_MODEL = "ViT-B-32-control"
CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
WEIGHTS_DIR = REPO_ROOT / "weights"
VARIANTS = ("spatial", "nonspatial")
#: Named weights -> committed safetensors file.
WEIGHTS: dict[str, Path] = {f"control-{v}": WEIGHTS_DIR / f"control-{v}.safetensors" for v in VARIANTS}

SHAPES = ("circle", "square", "triangle")
COLOURS = ("black", "red", "green", "blue")
CANVAS = 224
EMPTY_CAPTION = "an empty image"
#: 3x3 location names, row-major (row 0 = top of the image).
LOCATIONS = (
    "upper left", "upper centre", "upper right",
    "middle left", "centre", "middle right",
    "lower left", "lower centre", "lower right",
)  # fmt: skip
#: Seed of the held-out sets; training batches use ``SeedSequence([seed, step])``.
HELDOUT_SEED = 987_654_321
#: Images per task in the card's held-out metrics, and in the small set the tests reproduce.
N_HELDOUT = 300
N_SMALL = 48

_registered = False


def register_model_config() -> None:
    """Make ``ViT-B-32-control`` known to open_clip (idempotent)."""
    global _registered
    if not _registered:
        import open_clip

        open_clip.add_model_config(CONFIG_DIR)
        _registered = True


def weights_variant(weights: str) -> str | None:
    """``"spatial"`` for ``"control-spatial"`` etc.; None when ``weights`` is not a control name."""
    return weights[len("control-"):] if weights in WEIGHTS else None


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a control model; stored in its weights and card.

    ``steps`` optimiser steps of ``batch_size`` images; AdamW with linear
    warm-up over ``warmup`` steps then cosine decay to 0, gradient norm
    clipped at 1; ``threads`` is torch's CPU thread count (2, both cores
    here: 0.76 s per step against 1.13 s with 1, idle, bf16). A fraction ``p_empty`` of images is empty.
    ``pos_scale`` multiplies open_clip's initial visual positional embedding
    (std width^-0.5); ``loc_weight`` weighs :func:`location_loss` (spatial
    variant only: the nonspatial vocabulary names no location) and
    ``shape_weight`` weighs :func:`shape_loss` (both variants).
    """

    variant: str
    seed: int = 0
    steps: int = 1800
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 0.05
    warmup: int = 100
    p_empty: float = 0.15
    diameter: tuple[float, float] = (20.0, 80.0)
    bf16: bool = True
    threads: int = 2
    eval_every: int = 50
    pos_scale: float = 30.0
    loc_weight: float = 1.0
    shape_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        for name in ("steps", "batch_size", "threads", "eval_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not 0.0 <= self.p_empty < 1.0:
            raise ValueError(f"p_empty must be in [0, 1), got {self.p_empty!r}")
        if not self.pos_scale > 0:
            raise ValueError(f"pos_scale must be > 0, got {self.pos_scale!r}")
        for name in ("loc_weight", "shape_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")


@dataclass
class Batch:
    """A synthetic batch. ``images``: (n, 224, 224, 3) uint8; per image its
    ``shape`` and ``colour`` (``""`` when empty), ``cell`` (3x3 cell of the
    centre, -1 when empty) and centre ``x, y`` in canvas pixels."""

    images: np.ndarray
    shape: np.ndarray
    colour: np.ndarray
    cell: np.ndarray
    x: np.ndarray
    y: np.ndarray


Caption = tuple  # (shape, colour, cell): "" / "" / -1 where the caption does not name it


def vocabulary(variant: str) -> list[Caption]:
    """Every caption of a variant as ``(shape, colour, cell)``: "an empty image",
    and each shape with its colour named or not; ``spatial`` adds each of these
    with each of the 9 cells ("a red circle in the lower left"). 16 captions
    (nonspatial) or 151 (spatial)."""
    cells = (-1, *range(9)) if variant == "spatial" else (-1,)
    return [("", "", -1)] + [(s, c, k) for s in SHAPES for c in ("", *COLOURS) for k in cells]


def caption(shape: str, colour: str = "", cell: int = -1) -> str:
    """Caption text: ``caption("circle", "red", 6)`` -> ``"a red circle in the lower left"``;
    ``shape=""`` -> ``"an empty image"``."""
    if not shape:
        return EMPTY_CAPTION
    text = f"a {colour} {shape}" if colour else f"a {shape}"
    return f"{text} in the {LOCATIONS[cell]}" if cell >= 0 else text


def cell_of(x: np.ndarray, y: np.ndarray, canvas: int = CANVAS) -> np.ndarray:
    """3x3 cell (row-major, row 0 at the top) of centres ``x, y`` in canvas pixels."""
    cx = np.clip((np.asarray(x) * 3 // canvas).astype(int), 0, 2)
    cy = np.clip((np.asarray(y) * 3 // canvas).astype(int), 0, 2)
    return cy * 3 + cx


def sample_batch(cfg: TrainConfig, seed: int | Sequence[int], n: int | None = None) -> Batch:
    """Draw and render ``n`` (default ``cfg.batch_size``) images with their attributes.

    Shapes are drawn and rendered by :func:`helpers.stimuli.make_stimuli` and
    :func:`helpers.stimuli.render` (centres anywhere on the canvas, shapes
    clipped at the edges); the same ``seed`` gives the same batch.
    """
    from helpers import stimuli

    n = cfg.batch_size if n is None else int(n)
    rng = np.random.default_rng(seed)
    stim = stimuli.make_stimuli(
        n, seed=int(rng.integers(2**31)), diameter=cfg.diameter, shapes=SHAPES, colours=COLOURS, canvas=CANVAS
    )
    empty = rng.random(n) < cfg.p_empty
    images = np.full((n, CANVAS, CANVAS, 3), 255, dtype=np.uint8)
    for i in np.flatnonzero(~empty):
        images[i] = stimuli.render(stim, int(i))
    shape = np.where(empty, "", stim.shape)
    colour = np.where(empty, "", stim.colour)
    cell = np.where(empty, -1, cell_of(stim.x, stim.y))
    return Batch(
        images=images,
        shape=shape,
        colour=colour,
        cell=cell,
        x=stim.x,
        y=stim.y,
    )


def to_input(images: np.ndarray) -> torch.Tensor:
    """(n, 224, 224, 3) uint8 -> (n, 3, 224, 224) float32, normalised like open_clip's
    evaluation transform (which leaves a 224-px canvas otherwise unchanged)."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def positives(batch: Batch, captions: Sequence[Caption]) -> np.ndarray:
    """(n_images, n_captions) bool: caption ``(shape, colour, cell)`` is true of the image.

    Empty images match only the empty caption; a shape caption matches when the
    shape is equal and the colour/cell are unnamed or equal.
    """
    s = np.array([u[0] for u in captions])[None, :]
    c = np.array([u[1] for u in captions])[None, :]
    k = np.array([u[2] for u in captions])[None, :]
    return (
        (batch.shape[:, None] == s)
        & ((c == "") | (batch.colour[:, None] == c))
        & ((k == -1) | (batch.cell[:, None] == k))
    )


def contrastive_loss(logits: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Symmetric multi-positive InfoNCE (Radford et al. 2021, with soft targets).

    ``logits``: (n_images, n_captions) scaled cosine similarities; ``pos``:
    same-shape bool, every row with at least one True. Image->text: the
    cross-entropy against the uniform distribution over the row's positives;
    text->image: the same per column, over the columns with a positive (a
    caption true of no image in the batch is a pure negative). Returns the
    mean of the two directions.
    """
    p = pos.float()
    li = -(p / p.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
    has = pos.any(0)
    pc, lc = p[:, has], logits[:, has]
    lt = -(pc / pc.sum(0, keepdim=True) * lc.log_softmax(0)).sum(0).mean()
    return (li + lt) / 2


def location_loss(logits: torch.Tensor, batch: Batch, captions: Sequence[Caption]) -> torch.Tensor:
    """9-way cross-entropy of each shape image over "a <its shape> in the <cell>", k = 0..8.

    ``logits``: (n_images, n_captions) as in :func:`contrastive_loss`. The nine
    captions share the shape word, so only location separates them: the
    location hard negatives of NegCLIP, weighted on their own. 0 when the
    vocabulary names no cell (nonspatial) or the batch has no shape.
    """
    index = {u: j for j, u in enumerate(captions)}
    rows = np.flatnonzero(batch.cell >= 0)
    if (SHAPES[0], "", 0) not in index or rows.size == 0:
        return logits.new_zeros(())
    cols = np.array([[index[(batch.shape[i], "", k)] for k in range(9)] for i in rows])
    return _choice_loss(logits, rows, cols, batch.cell[rows])


def shape_loss(logits: torch.Tensor, batch: Batch, captions: Sequence[Caption]) -> torch.Tensor:
    """3-way cross-entropy of each shape image over "a circle", "a square", "a triangle".

    ``logits`` as in :func:`location_loss`: the shape hard negatives, weighted
    on their own (among the 151 spatial captions a shape image has 8 location
    negatives per shape negative). 0 when the batch has no shape.
    """
    index = {u: j for j, u in enumerate(captions)}
    rows = np.flatnonzero(batch.shape != "")
    if rows.size == 0:
        return logits.new_zeros(())
    cols = np.tile([index[(s, "", -1)] for s in SHAPES], (rows.size, 1))
    return _choice_loss(logits, rows, cols, np.array([SHAPES.index(x) for x in batch.shape[rows]]))


def _choice_loss(logits: torch.Tensor, rows: np.ndarray, cols: np.ndarray, target: np.ndarray) -> torch.Tensor:
    """Mean cross-entropy of image ``rows[i]`` choosing ``cols[i, target[i]]`` among ``cols[i]``."""
    picked = logits[torch.from_numpy(rows)[:, None], torch.from_numpy(cols)]
    return torch.nn.functional.cross_entropy(picked, torch.from_numpy(np.asarray(target)))


# --------------------------------------------------------------------------- model


def build_model(seed: int, pos_scale: float = 1.0) -> torch.nn.Module:
    """The control architecture with open_clip's initialisation after ``torch.manual_seed(seed)``,
    the visual positional embedding multiplied by ``pos_scale``."""
    import open_clip

    from helpers.models import _quiet_root_logger

    register_model_config()
    torch.manual_seed(int(seed))
    with _quiet_root_logger():
        model = open_clip.create_model(CONTROL_MODEL, pretrained=None)
    with torch.no_grad():
        model.visual.positional_embedding.mul_(pos_scale)
    return model


def tokenizer():
    """open_clip's tokenizer for the control architecture."""
    import open_clip

    register_model_config()
    return open_clip.get_tokenizer(CONTROL_MODEL)


def _autocast(enabled: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


def train_step(
    model,
    tokens: torch.Tensor,
    opt,
    batch: Batch,
    captions: Sequence[Caption],
    bf16: bool = False,
    loc_weight: float = 0.0,
    shape_weight: float = 0.0,
) -> float:
    """One optimiser step on ``batch`` against the caption ``vocabulary`` ``captions`` (``tokens``: their
    tokenisation, made once per training run) of :func:`contrastive_loss` + ``loc_weight`` x
    :func:`location_loss` + ``shape_weight`` x :func:`shape_loss`; returns the loss."""
    pos = torch.from_numpy(positives(batch, captions))
    with _autocast(bf16):
        img = model.encode_image(to_input(batch.images), normalize=True)
        txt = model.encode_text(tokens, normalize=True)
    logits = model.logit_scale.exp() * img.float() @ txt.float().T
    loss = contrastive_loss(logits, pos)
    if loc_weight:
        loss = loss + loc_weight * location_loss(logits, batch, captions)
    if shape_weight:
        loss = loss + shape_weight * shape_loss(logits, batch, captions)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, np.log(100.0))  # CLIP's clamp
    return float(loss.detach())


def _lr_lambda(cfg: TrainConfig):
    def f(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return 0.5 * (1 + np.cos(np.pi * min(1.0, t)))

    return f


def make_optimizer(model, cfg: TrainConfig):
    """AdamW (no decay on gains, biases, embeddings and the logit scale) and its schedule."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "embedding" in name or "logit_scale" in name else decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))


@dataclass
class TrainResult:
    model: torch.nn.Module
    config: TrainConfig
    history: list[dict] = field(default_factory=list)
    wall_s: float = 0.0
    load: list[float] = field(default_factory=list)


def train(cfg: TrainConfig, *, progress: bool = True, eval_n: int = 32) -> TrainResult:
    """Train a control model from scratch; deterministic for ``cfg`` and the torch version.

    The tqdm bar shows the loss and held-out circle-vs-empty, shape and (spatial)
    location accuracies on a small fixed set (``eval_n`` images per task),
    refreshed every ``cfg.eval_every`` steps (``eval_n=0``: no evaluation). ``history`` holds one dict per step
    (``step``, ``loss``, and the accuracies where measured); ``load`` the 1-min
    load average sampled at every evaluation.
    """
    from tqdm.auto import tqdm

    torch.set_num_threads(cfg.threads)
    model = build_model(cfg.seed, cfg.pos_scale).train()
    tok = tokenizer()
    opt, sched = make_optimizer(model, cfg)
    res = TrainResult(model, cfg)
    t0 = time.perf_counter()
    bar = tqdm(range(cfg.steps), desc=f"control-{cfg.variant}", disable=not progress)
    shown: dict = {}
    captions = vocabulary(cfg.variant)
    tokens = tok([caption(*u) for u in captions])  # the vocabulary is fixed: tokenised once
    for step in bar:
        batch = sample_batch(cfg, np.random.SeedSequence([cfg.seed, step]).generate_state(2))
        loss = train_step(model, tokens, opt, batch, captions, cfg.bf16, cfg.loc_weight, cfg.shape_weight)
        sched.step()
        rec = {"step": step + 1, "loss": loss}
        if eval_n and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps):
            model.eval()
            rec.update(evaluate(model, tok, n=eval_n))
            model.train()
            res.load.append(os.getloadavg()[0])
            shown = {k: f"{rec[k]:.2f}" for k in ("circle_vs_empty", "shape_only_circle", "shape_accuracy", "location") if k in rec}
        res.history.append(rec)
        bar.set_postfix(loss=f"{loss:.3f}", **shown)
    res.wall_s = time.perf_counter() - t0
    model.eval()
    return res


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def _probs(model, tok, images: np.ndarray, prompts: Sequence[str], batch_size: int = 128) -> np.ndarray:
    """Zero-shot probabilities (n, len(prompts)) in float32, as :func:`helpers.models.zero_shot_probs`."""
    txt = model.encode_text(tok(list(prompts)), normalize=True).float()
    out = []
    for i in range(0, len(images), batch_size):
        img = model.encode_image(to_input(images[i : i + batch_size]), normalize=True).float()
        out.append((model.logit_scale.exp().float() * img @ txt.T).softmax(-1))
    return torch.cat(out).numpy()


def heldout_sets(n: int, seed: int = HELDOUT_SEED, margin: float = 10.0) -> dict:
    """Fixed held-out images (never drawn in training: a separate seed stream).

    Returns a dict with ``circles`` (n black circles, the blog's distribution,
    (n, 224, 224, 3) uint8), ``squares`` and ``triangles`` (black, same
    centres and sizes), ``empty`` (n white images), and ``loc_circles``
    / ``loc_cells``: black circles whose centre is at least ``margin`` px from
    every 3x3 cell border (inside the canvas), with their cell.
    """
    from helpers import stimuli

    def draw(shape):
        stim = stimuli.make_stimuli(n, seed=seed, canvas=CANVAS, shapes=(shape,))
        return np.stack([stimuli.render(stim, i) for i in range(n)])

    circles = draw("circle")
    edges = np.array([0, CANVAS / 3, 2 * CANVAS / 3, CANVAS])
    rng = np.random.default_rng(seed + 1)
    cells = rng.integers(0, 9, size=n)
    cx = rng.uniform(edges[cells % 3] + margin, edges[cells % 3 + 1] - margin)
    cy = rng.uniform(edges[cells // 3] + margin, edges[cells // 3 + 1] - margin)
    d = rng.uniform(20.0, 80.0, size=n)
    loc = stimuli.StimulusSet(cx, cy, d, np.full(n, "circle"), np.full(n, "black"), {"canvas": CANVAS, "background": "white"}, "")
    return {
        "circles": circles,
        "squares": draw("square"),
        "triangles": draw("triangle"),
        "empty": np.full_like(circles, 255),
        "loc_circles": np.stack([stimuli.render(loc, i) for i in range(n)]),
        "loc_cells": cells,
    }


def evaluate(model, tok, *, n: int = 300, sets: dict | None = None) -> dict[str, float]:
    """Held-out zero-shot metrics of a control (or any open_clip) model.

    - ``circle_vs_empty``: accuracy of "a black circle" vs "an empty image" over
      n black circles and n empty images (balanced);
    - ``shape_only_circle``: fraction of the circles assigned to "a circle"
      among "a circle", "a square", "a triangle" (the blog's shape-only set);
    - ``shape_accuracy``: the same 3-way decision on black circles, squares and
      triangles at the same places and sizes, mean of the three accuracies
      (chance 1/3). It exposes a model that sends every shape to one prompt,
      which ``shape_only_circle`` alone would score as perfect;
    - ``location``: 9-way accuracy of "a black circle in the <cell>" on circles
      at least 10 px from every cell border (chance 1/9); measured for every
      variant (the nonspatial one should sit near chance).
    """
    from helpers.models import CIRCLE_VS_EMPTY, PROMPT_SETS

    sets = heldout_sets(n) if sets is None else sets
    p_circ = _probs(model, tok, sets["circles"], list(CIRCLE_VS_EMPTY.values()))
    p_empty = _probs(model, tok, sets["empty"], list(CIRCLE_VS_EMPTY.values()))
    out = {"circle_vs_empty": float(((p_circ.argmax(1) == 0).mean() + (p_empty.argmax(1) == 1).mean()) / 2)}
    shapes = list(PROMPT_SETS["shape only"].values())
    acc = [(_probs(model, tok, sets[k], shapes).argmax(1) == j).mean() for j, k in enumerate(("circles", "squares", "triangles"))]
    out["shape_only_circle"] = float(acc[0])
    out["shape_accuracy"] = float(np.mean(acc))
    loc = _probs(model, tok, sets["loc_circles"], [caption("circle", "black", k) for k in range(9)])
    out["location"] = float((loc.argmax(1) == sets["loc_cells"]).mean())
    return out


@torch.no_grad()
def location_diagnostics(model, tok, *, n: int = 900, ridge: float = 1e-2) -> dict[str, float]:
    """Where location is lost: the image side or the text side.

    ``probe``: 9-way cell accuracy of a ridge linear probe (one-hot targets,
    penalty ``ridge``) on the image embeddings of :func:`heldout_sets` location
    circles, fitted on the first 2/3 and tested on the last 1/3 (chance 1/9);
    ``prompt_cos``: mean cosine between the 9 "a black circle in the <cell>"
    prompt embeddings (1 = the text tower ignores the location words).
    """
    sets = heldout_sets(n)
    img = torch.cat([model.encode_image(to_input(sets["loc_circles"][i : i + 128]), normalize=True).float()
                     for i in range(0, n, 128)]).numpy().astype(np.float64)
    x, y = np.c_[img, np.ones(n)], sets["loc_cells"]
    fit, test = slice(0, 2 * n // 3), slice(2 * n // 3, n)
    w = np.linalg.solve(x[fit].T @ x[fit] + ridge * np.eye(x.shape[1]), x[fit].T @ np.eye(9)[y[fit]])
    txt = model.encode_text(tok([caption("circle", "black", k) for k in range(9)]), normalize=True).float().numpy()
    cos = txt @ txt.T
    return {"probe": float((np.argmax(x[test] @ w, 1) == y[test]).mean()),
            "prompt_cos": float(cos[~np.eye(9, dtype=bool)].mean())}


# --------------------------------------------------------------------------- storage


def save_weights(model, path: str | Path, cfg: TrainConfig) -> Path:
    """State dict in float16 safetensors (the embedding tables make float32 ~52 MB),
    with the training config as metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(path), metadata={"config": json.dumps(asdict(cfg)), "torch": torch.__version__})
    return path


def load_weights(path: str | Path) -> torch.nn.Module:
    """The stored weights in a float32 control model (eval mode)."""
    from safetensors.torch import load_file

    model = build_model(0)
    model.load_state_dict(load_file(str(path)), strict=True)
    return model.eval()


def plot_history(res: TrainResult, path: str | Path) -> Path:
    """Loss (per step, and its 50-step running mean) and held-out accuracies vs step."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    steps = np.array([h["step"] for h in res.history])
    loss = np.array([h["loss"] for h in res.history])
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    a.plot(steps, loss, lw=0.5, alpha=0.4, label="per step")
    k = min(50, len(loss))
    a.plot(steps[k - 1 :], np.convolve(loss, np.ones(k) / k, "valid"), lw=1.5, label=f"{k}-step mean")
    a.set(xlabel="step", ylabel="loss (InfoNCE + location and shape terms)", title=f"control-{res.config.variant}: training loss")
    a.legend()
    ev = [h for h in res.history if "circle_vs_empty" in h]
    for key in ("circle_vs_empty", "shape_only_circle", "shape_accuracy", "location"):
        if key not in ev[0]:
            continue
        b.plot([h["step"] for h in ev], [h[key] for h in ev], marker=".", label=key)
    b.axhline(1 / 9, ls=":", c="grey", label="location chance")
    b.set(xlabel="step", ylabel="held-out accuracy", ylim=(0, 1.02), title="held-out zero-shot (small set)")
    b.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _native_bf16() -> bool:
    try:
        return "avx512_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def _metrics_lines(cfg: TrainConfig, metrics: dict, status: str) -> list[str]:
    """The card's held-out metrics table, target status and per-tower location diagnosis."""
    h, sm = metrics["heldout"], metrics["small"]
    return [
        f"## Held-out metrics (stored float16 weights; `helpers.control.evaluate`, held-out seed {HELDOUT_SEED})",
        f"| metric | {N_HELDOUT} images per task | fixed small set ({N_SMALL}; reproduced by the tests) | target |",
        "| --- | --- | --- | --- |",
        f"| \"a black circle\" vs \"an empty image\" accuracy (circles and empty images, balanced) | {h['circle_vs_empty']:.3f} | {sm['circle_vs_empty']:.3f} | >= 0.98 |",
        f"| black circles assigned to \"a circle\" (shape-only set) | {h['shape_only_circle']:.3f} | {sm['shape_only_circle']:.3f} | >= 0.9 |",
        f"| 3-way shape accuracy on black circles, squares, triangles (mean of the three; chance 0.333) | {h['shape_accuracy']:.3f} | {sm['shape_accuracy']:.3f} | (no target; exposes ties) |",
        f"| 9-way location accuracy, \"a black circle in the <cell>\" (circles >= 10 px from cell borders; chance 0.111) | {h['location']:.3f} | {sm['location']:.3f} | "
        f"{'>= 0.8' if cfg.variant == 'spatial' else 'near chance'} |",
        "",
        status,
        "",
        f"Location, by tower (900 held-out circles, `helpers.control.location_diagnostics`): a linear probe reads the 3x3 cell "
        f"from the image embedding with accuracy {metrics['location_diagnostics']['probe']:.3f} (chance 0.111); the 9 location prompts "
        f"have mean cosine {metrics['location_diagnostics']['prompt_cos']:.3f} to each other (1 = location words ignored).",
        "",
    ]


def write_card(res: TrainResult, metrics: dict, path: str | Path, *, weights_file: Path, plot_file: Path) -> Path:
    """The model card (markdown) of one trained variant."""
    import open_clip

    cfg = res.config
    h = metrics["heldout"]
    arch = json.loads((CONFIG_DIR / f"{CONTROL_MODEL}.json").read_text())
    n_params = sum(p.numel() for p in res.model.parameters())
    n_caps = len(vocabulary(cfg.variant))
    caps = (f"the vocabulary also names the 3x3 cell of the centre (\"a red circle in the lower left\"); {n_caps} captions"
            if cfg.variant == "spatial" else f"captions never name a location; {n_caps} captions")
    load = f"{np.mean(res.load):.2f} (min {np.min(res.load):.2f}, max {np.max(res.load):.2f})" if res.load else "n/a"
    final = np.mean([h["loss"] for h in res.history[-50:]])
    before = np.mean([h["loss"] for h in res.history[-100:-50]]) if len(res.history) >= 100 else float("nan")
    checks = {
        "circle vs empty >= 0.98": h["circle_vs_empty"] >= 0.98,
        "shape-only circles >= 0.9": h["shape_only_circle"] >= 0.9,
        ("location >= 0.8" if cfg.variant == "spatial" else "location near chance (<= 0.2)"): (
            h["location"] >= 0.8 if cfg.variant == "spatial" else h["location"] <= 0.2
        ),
    }
    status = (
        f"**Targets reached:** {', '.join(k for k, ok in checks.items() if ok) or 'none'}. "
        f"**Missed:** {', '.join(k for k, ok in checks.items() if not ok) or 'none'}."
    )
    lines = [
        f"# control-{cfg.variant}: a small CLIP trained on synthetic shapes ({'with' if cfg.variant == 'spatial' else 'without'} location words)",
        "",
        f"Weights: `{weights_file.name}` beside this card (float16 safetensors, {weights_file.stat().st_size / 1e6:.1f} MB), "
        f"loaded with `load_model(\"{CONTROL_MODEL}\", \"control-{cfg.variant}\")` or `WEIGHTS=control-{cfg.variant}` "
        f"(the weights name implies `MODEL={CONTROL_MODEL}`). Positive control for the study: see `helpers/control.py`.",
        "",
        "## Architecture",
        f"open_clip config `{CONTROL_MODEL}` (`helpers/model_configs/{CONTROL_MODEL}.json`), {n_params / 1e6:.1f} M parameters, GELU:",
        f"- vision: {arch['vision_cfg']['image_size']} px input, patch {arch['vision_cfg']['patch_size']} (7x7 patches + class token = 50 tokens), "
        f"{arch['vision_cfg']['layers']} residual blocks, width {arch['vision_cfg']['width']}, {arch['vision_cfg']['width'] // arch['vision_cfg']['head_width']} heads;",
        f"- text: {arch['text_cfg']['layers']} blocks, width {arch['text_cfg']['width']}, {arch['text_cfg']['heads']} heads, "
        f"context {arch['text_cfg']['context_length']}, open_clip's CLIP BPE tokenizer (vocabulary {arch['text_cfg']['vocab_size']});",
        f"- joint embedding {arch['embed_dim']}.",
        "",
        "## Data",
        f"Generated on the fly from `SeedSequence([seed, step])` with `helpers.stimuli.make_stimuli`/`render`: {', '.join(SHAPES)} in "
        f"{', '.join(COLOURS)} on white, diameter uniform in {cfg.diameter[0]:g}-{cfg.diameter[1]:g} px, centres anywhere on the 224-px canvas "
        f"(shapes clipped at the edges); {cfg.p_empty:.0%} empty images. Captions: the variant's whole vocabulary every step, "
        f"\"an empty image\" and \"a <shape>\" with or without its colour (\"a red square\"); {caps}.",
        "",
        "## Training",
        f"- seed {cfg.seed}, {cfg.steps} steps of {cfg.batch_size} images ({cfg.steps * cfg.batch_size} pairs), AdamW lr {cfg.lr:g} "
        f"(warm-up {cfg.warmup}, cosine), weight decay {cfg.weight_decay:g}, {'bf16 autocast' if cfg.bf16 else 'float32'}, {cfg.threads} CPU thread(s);",
        "- loss: symmetric InfoNCE between the batch's images and the whole caption vocabulary, with multi-positive soft targets "
        "(a caption is a positive of every image it truly describes); the false captions are hard negatives (NegCLIP, Yuksekgonul et al. 2023);",
        f"- plus {cfg.loc_weight:g} x the location term (`location_loss`: 9-way cross-entropy of each shape image over \"a <its shape> in the <cell>\"; "
        "zero for the nonspatial vocabulary, which names no cell);",
        f"- plus {cfg.shape_weight:g} x the shape term (`shape_loss`: 3-way cross-entropy of each shape image over \"a circle\", "
        "\"a square\", \"a triangle\"; both variants);",
        f"- the visual positional embedding starts at {cfg.pos_scale:g}x open_clip's initial scale (std {cfg.pos_scale:g} x width^-0.5): at 1x the "
        "image tower loses position within 100 steps and neither tower learns location (see the README's \"Positive controls\");",
        f"- torch {torch.__version__}, open_clip {open_clip.__version__}, {platform.processor() or platform.machine()}, "
        f"capability {torch.backends.cpu.get_cpu_capability()}, native bf16 (avx512_bf16): {'yes' if _native_bf16() else 'no'};",
        f"- training wall time **{res.wall_s / 60:.1f} min**; 1-min load average during training {load} on {os.cpu_count()} cores "
        "(other jobs shared the machine);",
        f"- final loss (mean of last 50 steps) {final:.3f}; the 50 steps before: {before:.3f}"
        f"{' (still falling: more steps would help)' if final < before - 0.01 else ''}.",
        "",
        f"![loss curve]({plot_file.name})",
        "",
        *_metrics_lines(cfg, metrics, status),
        "## Retrain",
        "```",
        f"make control-models   # both variants; or: python -m helpers.control --variant {cfg.variant} --steps {cfg.steps}"
        f" --threads {cfg.threads}{'' if cfg.bf16 else ' --float32'}",
        "```",
        "",
    ]
    path = Path(path)
    path.write_text("\n".join(lines))
    return path


def build(variant: str, *, out_dir: str | Path = WEIGHTS_DIR, progress: bool = True, **kw) -> dict:
    """Train one variant (``kw``: :class:`TrainConfig` fields) and :func:`publish` it."""
    return publish(train(TrainConfig(variant=variant, **kw), progress=progress), out_dir)


def publish(res: TrainResult, out_dir: str | Path = WEIGHTS_DIR) -> dict:
    """Store weights (float16), loss curve, ``control-<variant>.json`` (config,
    wall time, load, metrics, history) and the card in ``out_dir``; the metrics
    are measured on the *stored* weights: ``heldout`` on :data:`N_HELDOUT`
    images per task, ``small`` on the fixed :data:`N_SMALL` set the tests
    reproduce. Returns the metrics."""
    out = Path(out_dir)
    v = res.config.variant
    wfile = save_weights(res.model, out / f"control-{v}.safetensors", res.config)
    stored, tok = load_weights(wfile), tokenizer()
    metrics = {"heldout": evaluate(stored, tok, n=N_HELDOUT), "small": evaluate(stored, tok, n=N_SMALL),
               "location_diagnostics": location_diagnostics(stored, tok)}
    plot = plot_history(res, out / f"control-{v}_loss.png")
    doc = {"config": asdict(res.config), "wall_s": res.wall_s, "load": res.load, "metrics": metrics, "history": res.history}
    (out / f"control-{v}.json").write_text(json.dumps(doc, indent=1))
    write_card(res, metrics, out / f"control-{v}.md", weights_file=wfile, plot_file=plot)
    return metrics


def load_result(variant: str, out_dir: str | Path = WEIGHTS_DIR) -> TrainResult:
    """A :class:`TrainResult` rebuilt from stored weights and ``control-<variant>.json``."""
    out = Path(out_dir)
    doc = json.loads((out / f"control-{variant}.json").read_text())
    cfg = TrainConfig(**{**doc["config"], "diameter": tuple(doc["config"]["diameter"])})
    return TrainResult(load_weights(out / f"control-{variant}.safetensors"), cfg, doc["history"], doc["wall_s"], doc["load"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m helpers.control", description="Train the control CLIPs.")
    ap.add_argument("--variant", choices=VARIANTS + ("both",), default="both")
    ap.add_argument("--steps", type=int, default=TrainConfig.steps)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--float32", action="store_true", help="train in float32 (default: bf16 autocast, ~1.5x faster on CPUs with native bf16)")
    ap.add_argument("--threads", type=int, default=TrainConfig.threads,
                    help="torch CPU threads (default 2; use 1 per job when other jobs share the cores)")
    ap.add_argument("--out", default=str(WEIGHTS_DIR))
    args = ap.parse_args(argv)
    for v in VARIANTS if args.variant == "both" else (args.variant,):
        m = build(v, out_dir=args.out, steps=args.steps, seed=args.seed, bf16=not args.float32, threads=args.threads)
        print(f"control-{v}: {m}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
