"""Hook-based recording of activations to disk: the Record stage (blog "Record"; narrated in notebooks/02_record).

Hooks (:mod:`helpers.hooks`) live in :class:`Capture` and are removed on exit and on error; the token axis is
checked against the tower input (``1 + grid**2`` tokens), never assumed. Each batch streams into one ``.npy``
memmap per module; the manifest, rewritten atomically after every batch, lets an interrupted recording resume and
refuses one made from other stimuli or weights (file names: :mod:`helpers.paths`).

Token selections (``tokens=``) of a transformer output ``(B, T, D)``, ``T = 1 + gh*gw`` (class token first, patches
row-major): ``"cls"`` ``x[:, 0]`` (n, D), the blog's; ``"patches"`` (n, gh*gw, D) (:func:`patch_table`); ``"all"``
(n, T, D); ``"mean"`` mean over patches (n, D), float32. A conv output ``(B, C, gh, gw)`` (``visual.conv1``, before
the class token exists) refuses ``"cls"``; ``"patches"`` = ``"all"`` (n, gh*gw, C); ``"mean"`` (n, C). Outputs
without tokens ``(B, D)`` accept ``"all"`` only; text modules accept ``"all"`` and ``"eot"`` (:func:`record_text`).

Modules are chosen by ``named_modules()`` names or glob patterns matched per dotted component (``*``, ``?``,
``[...]`` never cross a dot; ``**`` spans components): ``"visual.transformer.resblocks.*.attn"`` is the 12
attention sublayers.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import difflib
import fnmatch
import json
import logging
import os
import platform
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, NamedTuple, Sequence

import numpy as np
import torch
from torch import nn

from helpers import hooks
from helpers.names import describe, hook_name, label, tower_of
from helpers import paths
from helpers.models import weights_hash as models_weights_hash
from helpers.paths import RECORDING_EMBEDDINGS as EMBEDDINGS
from helpers.paths import RECORDING_MANIFEST as MANIFEST
from helpers.paths import recording_array
from helpers.stimuli import check_batch_size

log = logging.getLogger(__name__)

#: The blog's layers: the 12 attention sublayers of the image transformer.
DEFAULT_LAYERS = "visual.transformer.resblocks.*.attn"

#: Token selections understood by :func:`select_tokens`.
TOKEN_SELECTIONS = ("cls", "patches", "all", "mean", "eot")

#: Storage dtypes (numpy) by name.
STORAGE_DTYPES: dict[str, type] = {"float32": np.float32, "float16": np.float16}

#: ``mmap_mode`` values of :func:`load_recording`: none of them can change a file.
READ_MODES = ("r", "c", None)
FORMAT = "helpers.record/1"

#: Manifest fields that must agree before a recording is resumed or reused.
IDENTITY_KEYS = (
    "model",
    "weights",
    "weights_hash",
    "seed",
    "quick_gelu",
    "compute_dtype",
    "layers",
    "tokens",
    "storage_dtype",
    "stimuli_hash",
    "n_stimuli",
    "input_size",
)

_GLOB_CHARS = re.compile(r"[*?\[]")


class LayoutError(RuntimeError):
    """A captured tensor does not have the layout the model declares."""


class RecordingMismatchError(ValueError):
    """An existing recording was made with other stimuli, model or settings."""


class CorruptRecordingError(RecordingMismatchError):
    """A manifest or array file that cannot be parsed (truncated, overwritten, not ours)."""


class IncompleteRecordingError(RuntimeError):
    """A recording was loaded that has not finished (see ``allow_incomplete``)."""


# =========================================================================== layer names


def natural_key(name: str) -> tuple:
    """Sort key that orders digit runs numerically (``resblocks.2`` < ``resblocks.10``)."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def match_layer(pattern: str, name: str) -> bool:
    """Whether a dotted module ``name`` matches a glob ``pattern``.

    Matching is per dotted component with :func:`fnmatch.fnmatchcase`, so
    ``*``, ``?`` and ``[...]`` stay within one component; a component ``**``
    matches any number (including zero) of components.
    """

    def rec(p: Sequence[str], n: Sequence[str]) -> bool:
        if not p:
            return not n
        if p[0] == "**":
            return any(rec(p[1:], n[i:]) for i in range(len(n) + 1))
        return bool(n) and fnmatch.fnmatchcase(n[0], p[0]) and rec(p[1:], n[1:])

    return rec(pattern.split("."), name.split("."))


def _as_module(model: Any) -> nn.Module:
    """The ``nn.Module`` of a :class:`~helpers.models.LoadedModel` or a module itself."""
    m = getattr(model, "model", model)
    if not isinstance(m, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module or a LoadedModel, got {type(model).__name__}")
    if getattr(m, "_orig_mod", None) is not None:
        raise ValueError(
            "model is a torch.compile wrapper, which silently ignores forward hooks registered after "
            "compiling; record the uncompiled module (model._orig_mod)"
        )
    return m


def _parent(model: nn.Module, name: str) -> nn.Module | None:
    if "." not in name:
        return model if name else None
    return model.get_submodule(name.rsplit(".", 1)[0])


def _unhookable_reason(model: nn.Module, name: str, module: nn.Module) -> str | None:
    """Why a forward hook on this module would never fire (or None)."""
    if name == "":
        return "the root module returns several outputs; choose sub-modules"
    if isinstance(module, (nn.ModuleList, nn.ModuleDict)):
        return "it is a container that is never called itself; choose its elements"
    if isinstance(_parent(model, name), nn.MultiheadAttention):
        return (
            "nn.MultiheadAttention uses its sub-layers' weights inside one fused call, so their hooks "
            f"never fire; hook {name.rsplit('.', 1)[0]!r} instead"
        )
    return None


_EXAMPLE_LAYERS = (
    "visual.conv1",
    "visual.ln_pre",
    "visual.transformer.resblocks.0",
    "visual.transformer.resblocks.0.attn",
    "visual.transformer.resblocks.0.mlp",
    "visual.ln_post",
    "transformer.resblocks.0",
    "ln_final",
)


def resolve_layers(model: Any, layers: str | Sequence[str] = DEFAULT_LAYERS) -> list[str]:
    """Resolve exact module names and glob patterns to a sorted list of names.

    Parameters:
    model : nn.Module or LoadedModel — An open_clip model (names are relative to it, e.g. ``visual.conv1``).
    layers : str or sequence of str — Exact names from ``model.named_modules()`` or per-component glob patterns (see
        :func:`match_layer`). Default: :data:`DEFAULT_LAYERS`.

    Returns:
    list of str — Unique names in natural order (``resblocks.2`` before ``resblocks.10``). Globs skip modules whose
        hooks never fire (containers such as ``ModuleList``, the sub-layers of ``nn.MultiheadAttention``).

    Raises:
    ValueError — Empty ``layers``, a pattern that matches nothing (the message lists close matches and valid
        examples), or an exact name whose hook would never fire.
    """
    m = _as_module(model)
    if isinstance(layers, str):
        layers = [layers]
    layers = list(layers)
    if not layers or not all(isinstance(p, str) and p.strip() for p in layers):
        raise ValueError(f"layers must be a module name, a glob pattern or a non-empty list of them, got {layers!r}")
    modules = dict(m.named_modules())
    names = [n for n in modules if n]
    chosen: set[str] = set()
    for pat in layers:
        pat = pat.strip()
        if not _GLOB_CHARS.search(pat):
            if pat not in modules:
                raise ValueError(_unmatched_message(pat, names))
            why = _unhookable_reason(m, pat, modules[pat])
            if why:
                raise ValueError(f"layers: cannot record {pat!r}: {why}")
            chosen.add(pat)
            continue
        hits = [n for n in names if match_layer(pat, n) and _unhookable_reason(m, n, modules[n]) is None]
        if not hits:
            raise ValueError(_unmatched_message(pat, names))
        chosen.update(hits)
    return sorted(chosen, key=natural_key)


def _unmatched_message(pattern: str, names: Sequence[str]) -> str:
    close = difflib.get_close_matches(pattern, names, n=5, cutoff=0.5)
    examples = [n for n in _EXAMPLE_LAYERS if n in names] or list(names[:8])
    msg = f"layers: {pattern!r} matches no module of this model."
    if close:
        msg += f" Close matches: {close}."
    msg += (
        f" Valid names look like {examples}; globs match one dotted component per '*' "
        "(use '**' to span several), e.g. 'visual.transformer.resblocks.*.attn'."
    )
    return msg


# =========================================================================== token layout


@dataclass(frozen=True)
class ModuleLayout:
    """A recorded module: its name, tower (``"image"``/``"text"``) and whether it is a 2-D convolution."""

    name: str
    tower: str
    conv: bool


def module_layout(model: Any, name: str) -> ModuleLayout:
    """The :class:`ModuleLayout` of module ``name`` (sequence-first models are refused by :mod:`helpers.hooks`)."""
    m = hooks.require_batch_first(_as_module(model))
    return ModuleLayout(name=name, tower=tower_of(name), conv=isinstance(m.get_submodule(name), nn.Conv2d))


def check_tokens(tokens: str) -> str:
    """Validate a token selection name (see the module docstring)."""
    if tokens not in TOKEN_SELECTIONS:
        raise ValueError(f"tokens must be one of {TOKEN_SELECTIONS}, got {tokens!r}")
    return tokens


def _refuse_static(layout: ModuleLayout, tokens: str) -> None:
    """Refuse token selections that can never apply to a module, before any forward."""
    if layout.tower == "text" and tokens in ("cls", "patches", "mean"):
        raise ValueError(
            f"tokens={tokens!r} is undefined for text-tower module {layout.name!r}: CLIP's text tower has no "
            "class token or patches (and 'mean' would average padding); use tokens='eot' (the pooled "
            "end-of-text token) or 'all'"
        )
    if layout.tower == "image" and tokens == "eot":
        raise ValueError(f"tokens='eot' applies to text-tower modules only, not {layout.name!r}; use 'cls'")
    if layout.conv and tokens == "cls":
        raise ValueError(
            f"tokens='cls' is undefined for {layout.name!r}: a convolution output (B, C, H, W) runs before the "
            "class token is prepended. Use tokens='patches' (one row per grid position, row-major, "
            "like the transformer's patch tokens), 'all' (same as 'patches') or 'mean' (spatial mean)"
        )


@dataclass
class TowerInput:
    """What the tower's input revealed in the current forward."""

    batch: int
    n_tokens: int | None
    n_prefix: int
    grid: tuple[int, int] | None = None
    text: torch.Tensor | None = None
    pool: str | None = None


def select_tokens(x: torch.Tensor, layout: ModuleLayout, tokens: str, inp: TowerInput) -> torch.Tensor:
    """Normalise one module output to batch-first, assert its shape, select tokens.

    Parameters:
    x : tensor — The module output: ``(B, T, D)``, ``(B, C, H, W)`` or ``(B, D)``.
    layout : ModuleLayout
    tokens : str — See the module docstring.
    inp : TowerInput — Batch size, expected token count and prefix tokens, from the tower input.

    Returns:
    tensor — ``(B, D)``, ``(B, P, D)`` or ``(B, T, D)``; a view or a new tensor.

    Raises:
    LayoutError — The shape contradicts the declared layout (batch or token count).
    ValueError — The selection is undefined for this kind of output.
    """
    name = layout.name
    if x.ndim == 3:
        if x.shape[0] != inp.batch or (inp.n_tokens is not None and x.shape[1] != inp.n_tokens):
            flipped = x.shape[1] == inp.batch and x.shape[0] == inp.n_tokens
            raise LayoutError(
                f"{name}: batch-first output {tuple(x.shape)} does not match batch={inp.batch}, "
                f"tokens={inp.n_tokens}" + ("; it looks transposed (sequence-first)" if flipped else "")
            )
        p = inp.n_prefix
        if tokens == "all":
            return x
        if tokens == "eot":
            if inp.text is None:
                raise ValueError(f"tokens='eot' needs the text input; {name} is not in the text tower")
            return x[torch.arange(x.shape[0], device=x.device), _eot_index(inp)]
        if p < 1 and tokens == "cls":
            raise ValueError(f"tokens='cls': {name} has no class token")
        if tokens == "cls":
            return x[:, 0]
        if inp.grid is not None and x.shape[1] - p != inp.grid[0] * inp.grid[1]:
            raise LayoutError(f"{name}: {x.shape[1] - p} patch tokens, expected grid {inp.grid}")
        if tokens == "patches":
            return x[:, p:]
        if tokens == "mean":
            return x[:, p:].float().mean(dim=1)
    elif x.ndim == 4:
        if x.shape[0] != inp.batch:
            raise LayoutError(f"{name}: output {tuple(x.shape)} does not start with batch={inp.batch}")
        if tokens in ("patches", "all"):
            return x.flatten(2).transpose(1, 2)
        if tokens == "mean":
            return x.float().mean(dim=(2, 3))
        raise ValueError(
            f"tokens={tokens!r} is undefined for {name}: its output {tuple(x.shape)} has no class token; "
            "use 'patches', 'all' or 'mean'"
        )
    elif x.ndim == 2:
        if x.shape[0] != inp.batch:
            raise LayoutError(f"{name}: output {tuple(x.shape)} does not start with batch={inp.batch}")
        if tokens == "all":
            return x
        raise ValueError(f"{name}: output {tuple(x.shape)} has no token axis; only tokens='all' applies")
    raise LayoutError(f"{name}: unsupported output shape {tuple(x.shape)}")


def _eot_index(inp: TowerInput) -> torch.Tensor:
    text = inp.text
    if inp.pool in (None, "argmax"):
        return text.argmax(dim=-1)
    if inp.pool == "last":
        return torch.full((text.shape[0],), text.shape[1] - 1, dtype=torch.long, device=text.device)
    if inp.pool == "first":
        return torch.zeros(text.shape[0], dtype=torch.long, device=text.device)
    raise ValueError(f"tokens='eot': text pooling {inp.pool!r} is not supported")


def patch_table(source: Any = None, *, grid: Sequence[int] | None = None, patch_size: Sequence[int] | None = None):
    """Where each patch token looks: row, column and pixel box in the input frame.

    Parameters:
    source : LoadedModel, open_clip CLIP / VisionTransformer, or a recording manifest (dict), optional — Where to read
        ``grid`` and ``patch_size`` from.
    grid : (rows, cols), optional — Patch grid, e.g. ``(7, 7)`` for ViT-B/32 at 224 px.
    patch_size : (height, width) in pixels, optional — E.g. ``(32, 32)``.

    Returns:
    pandas.DataFrame — One row per patch, in token order: ``patch`` (0..P-1, the index along the ``patches`` axis),
        ``token`` (its index in the full sequence, ``patch + 1`` behind the class token), ``row``, ``col``
        (row-major), and the half-open pixel box ``x0 <= x < x1``, ``y0 <= y < y1`` with its centre ``cx, cy`` in the
        model's input frame (x right, y down; see :func:`helpers.stimuli.positions_in_input` for stimulus positions in
        the same frame).
    """
    import pandas as pd

    if source is not None:
        if isinstance(source, Mapping):
            geo = source.get("geometry", source)
            grid, patch_size = geo["grid"], geo["patch_size"]
        else:
            m = _as_module(source)
            vis = getattr(m, "visual", m)
            patch_size = tuple(vis.patch_size)
            grid = tuple(vis.grid_size)
    if grid is None or patch_size is None:
        raise ValueError("patch_table needs a model, a manifest, or both grid= and patch_size=")
    gh, gw = (int(v) for v in grid)
    ph, pw = (int(v) for v in patch_size)
    p = np.arange(gh * gw)
    row, col = p // gw, p % gw
    return pd.DataFrame(
        {
            "patch": p,
            "token": p + 1,
            "row": row,
            "col": col,
            "x0": col * pw,
            "x1": (col + 1) * pw,
            "y0": row * ph,
            "y1": (row + 1) * ph,
            "cx": (col + 0.5) * pw,
            "cy": (row + 0.5) * ph,
        }
    )


# =========================================================================== capture


def _tower_input(model: nn.Module, tower: str, x: torch.Tensor, entry: nn.Module) -> TowerInput:
    """Batch size and token geometry seen at a tower's entry module."""
    if tower == "image":
        ph, pw = entry.patch_size if hasattr(entry, "patch_size") else (None, None)
        n_prefix = 1 if getattr(entry, "class_embedding", None) is not None else 0
        grid = (x.shape[-2] // ph, x.shape[-1] // pw) if ph else None
        n_tok = (n_prefix + grid[0] * grid[1]) if grid else None
        return TowerInput(int(x.shape[0]), n_tok, n_prefix, grid)
    pool = getattr(model, "text_pool_type", None) or getattr(entry, "pool_type", None)
    return TowerInput(int(x.shape[0]), int(x.shape[1]), 0, None, x.detach(), pool)


class Capture:
    """Context manager that records named modules during any forward pass.

    Parameters:
    model : nn.Module or LoadedModel — An open_clip model.
    layers : str or sequence of str — Names or globs, see :func:`resolve_layers`.
    tokens : str — Token selection applied inside the hook (so only the selection is kept), see the module docstring.
        Default ``"all"``.

    Attributes:
    names : list of str — Resolved module names.
    outputs : dict name -> tensor — Selected, batch-first, detached outputs of the most recent call of each module, on
        the model's device and in its dtype (``"mean"`` is float32).
    calls : Counter — How often each module ran since the last :meth:`clear`.

    Examples:
    >>> with Capture(lm, "transformer.resblocks.*", tokens="eot") as cap:   # doctest: +SKIP
    ...     lm.model.encode_text(lm.tokenizer(["a black circle"]))
    >>> cap.outputs["transformer.resblocks.11"].shape                       # doctest: +SKIP
    torch.Size([1, 512])

    Hooks are registered on ``__enter__`` and removed on ``__exit__``, also when
    the body raises; the model's parameters, buffers and modes are not touched.
    """

    def __init__(self, model: Any, layers: str | Sequence[str] = DEFAULT_LAYERS, tokens: str = "all"):
        self.model = _as_module(model)
        self.tokens = check_tokens(tokens)
        self.names = resolve_layers(self.model, layers)
        self.layouts = {n: module_layout(self.model, n) for n in self.names}
        for lay in self.layouts.values():
            _refuse_static(lay, tokens)
        self.outputs: dict[str, torch.Tensor] = {}
        self.inputs: dict[str, TowerInput] = {}
        self.calls: Counter = Counter()
        self._stack = contextlib.ExitStack()

    def _tower_entries(self) -> dict[str, nn.Module]:
        towers = {lay.tower for lay in self.layouts.values()}
        entries = {}
        if "image" in towers:
            entries["image"] = self.model.visual
        if "text" in towers:
            text = getattr(self.model, "text", None)
            entries["text"] = text if isinstance(text, nn.Module) else self.model.token_embedding
        return entries

    def _on_input(self, tower: str, x: torch.Tensor) -> None:
        self.inputs[tower] = _tower_input(self.model, tower, x, self._entries[tower])

    def _on_output(self, name: str, out: torch.Tensor) -> None:
        lay = self.layouts[name]
        inp = self.inputs.get(lay.tower)
        if inp is None:
            raise LayoutError(
                f"{name} ran but the {lay.tower} tower's input was not seen; run the forward through "
                "model.encode_image / model.visual (image) or model.encode_text (text)"
            )
        sel = select_tokens(out.detach(), lay, self.tokens, inp)
        self.outputs[name] = sel.clone() if sel.data_ptr() == out.data_ptr() or sel._is_view() else sel
        self.calls[name] += 1

    def __enter__(self) -> "Capture":
        self._entries = self._tower_entries()
        self._stack = contextlib.ExitStack()
        with self._stack as stack:
            stack.enter_context(hooks.read_inputs(self._entries, self._on_input))
            stack.enter_context(hooks.edit_outputs(hooks.named(self.model, self.names), self._on_output))
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc) -> bool:
        self.remove()
        return False

    def remove(self) -> None:
        """Remove every hook this capture registered (idempotent)."""
        self._stack.close()

    def clear(self) -> None:
        """Forget outputs, inputs and call counts (call before each forward)."""
        self.outputs.clear()
        self.inputs.clear()
        self.calls.clear()

    def missing(self) -> list[str]:
        """Modules that did not run since the last :meth:`clear`."""
        return [n for n in self.names if self.calls[n] == 0]

    def check_complete(self) -> None:
        """Raise unless every module ran exactly once since the last :meth:`clear`."""
        miss = self.missing()
        if miss:
            towers = sorted({self.layouts[n].tower for n in miss})
            raise RuntimeError(
                f"{len(miss)} recorded module(s) did not run in this forward ({miss[:4]}...); "
                f"{'/'.join(towers)}-tower modules only run in "
                + ("encode_text" if towers == ["text"] else "encode_image")
            )
        multi = [n for n in self.names if self.calls[n] > 1]
        if multi:
            raise RuntimeError(f"module(s) ran more than once in one forward, outputs would be ambiguous: {multi}")


def capture(model: Any, layers: str | Sequence[str] = DEFAULT_LAYERS, tokens: str = "all") -> Capture:
    """Shorthand for :class:`Capture` (use as ``with capture(...) as cap:``)."""
    return Capture(model, layers, tokens)


# =========================================================================== forward loop


def _batch_source(
    lm, stim, batch_size: int, start: int, images: torch.Tensor | None, num_workers: int
) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
    """Batches of preprocessed images from ``start`` on, from ``images`` or by rendering."""
    n = len(stim)
    if images is not None:
        if images.ndim != 4 or images.shape[0] != n:
            raise ValueError(f"images must be preprocessed (n={n}, 3, S, S), got {tuple(images.shape)}")
        for a in range(start, n, batch_size):
            b = min(a + batch_size, n)
            yield images[a:b], np.arange(a, b)
        return
    from helpers.stimuli import iter_batches

    yield from iter_batches(stim, lm.preprocess, batch_size, indices=range(start, n), num_workers=num_workers)


def _forward_batches(lm, cap: Capture, batches: Iterable) -> Iterator[tuple[np.ndarray, dict, torch.Tensor]]:
    """Run ``encode_image`` per batch; yield (indices, {name: tensor}, embeddings)."""
    for images, idx in batches:
        cap.clear()
        x = images.to(device=lm.device, dtype=lm.dtype)
        emb = lm.model.encode_image(x, normalize=True)
        cap.check_complete()
        yield np.asarray(idx), {n: cap.outputs[n] for n in cap.names}, emb


def _image_only(names: Sequence[str]) -> None:
    text = [n for n in names if tower_of(n) == "text"]
    if text:
        raise ValueError(
            f"layers: {text[:3]} are text-tower modules, which do not run on images; record them with "
            "Capture(...) around encode_text or with record_text()"
        )


@torch.inference_mode()
def record_arrays(
    lm,
    stim,
    *,
    layers: str | Sequence[str] = DEFAULT_LAYERS,
    tokens: str = "cls",
    indices: Sequence[int] | None = None,
    batch_size: int = 16,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Record a *small* subset in memory (for checks; everything is held in RAM).

    Returns:
    acts : dict name -> float32 array (n_sel, [tokens,] neurons)
    embeddings : (n_sel, embed_dim) float32, L2-normalised
    """
    from helpers.stimuli import iter_batches

    with Capture(lm, layers, tokens) as cap:
        _image_only(cap.names)
        chunks: dict[str, list] = {n: [] for n in cap.names}
        embs = []
        for _, outs, emb in _forward_batches(lm, cap, iter_batches(stim, lm.preprocess, batch_size, indices=indices)):
            for n, t in outs.items():
                chunks[n].append(t.float().cpu().numpy())
            embs.append(emb.float().cpu().numpy())
    return {n: np.concatenate(c) for n, c in chunks.items()}, np.concatenate(embs)


@torch.inference_mode()
def record_text(
    lm, prompts: Sequence[str], layers: str | Sequence[str] = "transformer.resblocks.*", tokens: str = "eot"
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Record text-tower modules while encoding prompts.

    Returns:
    acts : dict name -> float32 array (n_prompts, [77,] width)
    embeddings : (n_prompts, embed_dim) float32, L2-normalised
    """
    if isinstance(prompts, str) or not prompts:
        raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r}")
    with Capture(lm, layers, tokens) as cap:
        emb = lm.model.encode_text(lm.tokenizer(list(prompts)).to(lm.device), normalize=True)
        cap.check_complete()
        acts = {n: cap.outputs[n].float().cpu().numpy() for n in cap.names}
    return acts, emb.float().cpu().numpy()


# =========================================================================== storage


def _versions() -> dict[str, str]:
    import open_clip

    import helpers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "open_clip": getattr(open_clip, "__version__", "unknown"),
        "numpy": np.__version__,
        "helpers": helpers.__version__,
    }


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _dtype_name(dt: torch.dtype) -> str:
    return str(dt).replace("torch.", "")


def _geometry(model: nn.Module, input_size: int) -> dict:
    vis = model.visual
    ps = getattr(vis, "patch_size", None)
    if ps is None:
        return {"input_size": int(input_size)}
    ps = [int(v) for v in ps]
    grid = [int(input_size) // ps[0], int(input_size) // ps[1]]
    return {
        "input_size": int(input_size),
        "patch_size": ps,
        "grid": grid,
        "n_prefix_tokens": 1 if getattr(vis, "class_embedding", None) is not None else 0,
        "n_tokens": 1 + grid[0] * grid[1],
        "transformer_batch_first": hooks.require_batch_first(vis) is vis if hasattr(vis, "transformer") else None,
        "token_order": "class token at 0, then patches row-major (token 1 + row*cols + col)",
    }


def read_manifest(path: str | Path) -> dict:
    """Read the manifest of a recording folder (or the file itself)."""
    p = Path(path)
    p = p / MANIFEST if p.is_dir() or not p.suffix else p
    if not p.is_file():
        raise FileNotFoundError(f"no recording manifest at {p}; run notebooks/02_record.ipynb (helpers.record.record)")
    try:
        man = json.loads(p.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptRecordingError(
            f"{p} is corrupt ({type(e).__name__}); re-record with overwrite=True (make study FORCE=1)"
        ) from None
    if not isinstance(man, dict) or not isinstance(man.get("progress"), dict):
        raise CorruptRecordingError(f"{p} is not a recording manifest; re-record with overwrite=True (make study FORCE=1)")
    return man


def _write_manifest(folder: Path, manifest: dict) -> None:
    """Atomic rewrite: a crash leaves either the old or the new manifest."""
    tmp = folder / (MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / MANIFEST)


def _identity_diff(stored: Mapping, wanted: Mapping) -> list[str]:
    out = []
    for k in IDENTITY_KEYS:
        a, b = stored.get(k), wanted.get(k)
        if a != b:
            out.append(f"{k}: recorded {a!r}, requested {b!r}")
    return out


def _clear_folder(folder: Path) -> None:
    """Delete a previous recording's files (manifest, embeddings, layer arrays); reads nothing."""
    files = {MANIFEST, MANIFEST + ".tmp", EMBEDDINGS}
    files.update(p.name for p in folder.glob(recording_array("*")))
    for f in files:
        (folder / f).unlink(missing_ok=True)


def record(
    lm,
    stim,
    out_dir: str | Path,
    *,
    layers: str | Sequence[str] = DEFAULT_LAYERS,
    tokens: str = "cls",
    storage_dtype: str = "float32",
    batch_size: int = 64,
    overwrite: bool = False,
    progress: bool = True,
    num_workers: int = 0,
    images: torch.Tensor | None = None,
    on_batch: Callable[[dict], None] | None = None,
    condition: str | None = None,
    weights_hash: str | None = None,
) -> dict:
    """Record ``layers`` (image tower) for every stimulus into per-layer ``.npy`` memmaps; return the manifest.

    One ``encode_image`` forward per batch; the manifest is rewritten atomically
    after each batch, so an interrupted call resumes when called again. An
    existing recording is resumed or returned when it matches on every
    :data:`IDENTITY_KEYS` field and refused (:class:`RecordingMismatchError`)
    otherwise; ``overwrite=True`` deletes it first. ``tokens``: module docstring;
    ``storage_dtype``: float32 or float16 (overflow refused); ``images``:
    preprocessed (n, 3, S, S) instead of rendering; ``on_batch(dict)`` is called
    after each committed batch; ``weights_hash`` skips hashing (you vouch for it).
    """
    if storage_dtype not in STORAGE_DTYPES:
        raise ValueError(f"storage_dtype must be one of {tuple(STORAGE_DTYPES)}, got {storage_dtype!r}")
    check_batch_size(batch_size)
    check_tokens(tokens)
    if tokens == "eot":
        raise ValueError("tokens='eot' is for text-tower modules; image recordings use 'cls', 'patches', 'all' or 'mean'")
    cap = Capture(lm.model, layers, tokens)
    _image_only(cap.names)
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    identity = _identity(lm, stim, cap.names, tokens, storage_dtype, weights_hash)
    old = _matching_recording(folder, identity, overwrite)
    if old is not None and old.get("complete"):
        log.info("recording in %s is complete and matches; nothing to do", folder)
        return old
    manifest = old or _new_manifest(lm, identity, condition)
    start = int(manifest["progress"]["n_done"])
    manifest["device"] = str(lm.device)
    manifest["batch_size"] = int(batch_size)
    session = {"started": _now(), "start_at": start, "batch_size": int(batch_size), "versions": _versions()}
    manifest["progress"]["sessions"].append(session)
    _write_manifest(folder, manifest)
    batches = _batch_source(lm, stim, int(batch_size), start, images, num_workers)
    done = _stream(lm, cap, batches, folder, manifest, session, storage_dtype, progress, on_batch, condition)
    if done != len(stim):
        raise RuntimeError(f"recording stopped at {done}/{len(stim)} stimuli")
    manifest["complete"] = True
    manifest["finished"] = _now()
    _write_manifest(folder, manifest)
    return manifest


def _identity(lm, stim, names: Sequence[str], tokens: str, storage_dtype: str, weights_hash: str | None) -> dict:
    """The manifest's :data:`IDENTITY_KEYS` fields for this recording."""
    return {
        "model": lm.name,
        "weights": lm.weights,
        "weights_hash": weights_hash or models_weights_hash(lm.model),
        "seed": lm.seed,
        "quick_gelu": bool(lm.quick_gelu),
        "compute_dtype": _dtype_name(lm.dtype),
        "layers": list(names),
        "tokens": tokens,
        "storage_dtype": storage_dtype,
        "stimuli_hash": stim.hash,
        "n_stimuli": len(stim),
        "input_size": int(lm.input_size),
    }


def _matching_recording(folder: Path, identity: dict, overwrite: bool) -> dict | None:
    """The manifest of the recording in ``folder`` (None: none); refuse one with another identity."""
    if overwrite:  # never parse what is about to be deleted: a corrupt manifest must not block a rebuild
        _clear_folder(folder)
    old = read_manifest(folder) if (folder / MANIFEST).is_file() else None
    if old is None and any(folder.glob(recording_array("*"))):
        raise RecordingMismatchError(
            f"{folder} holds .npy files but no {MANIFEST}; refusing to mix. Pass overwrite=True to start fresh"
        )
    if old is not None:
        diff = _identity_diff(old, identity)
        if old.get("format") != FORMAT:
            diff.insert(0, f"format: recorded {old.get('format')!r}, this code writes {FORMAT!r}")
        if diff:
            raise RecordingMismatchError(
                f"{folder} holds a different recording; refusing to resume or mix it:\n  - "
                + "\n  - ".join(diff)
                + "\nPass overwrite=True to delete it and record afresh, or choose another folder."
            )
    return old


def _new_manifest(lm, identity: dict, condition: str | None) -> dict:
    return {
        "format": FORMAT,
        "complete": False,
        "condition": condition,
        **identity,
        "model_label": getattr(lm, "label", lm.name),
        "arrays": {},
        "embeddings": None,
        "geometry": _geometry(lm.model, lm.input_size),
        "versions": _versions(),
        "created": _now(),
        "progress": {"n_done": 0, "sessions": []},
    }


def _stream(lm, cap: Capture, batches, folder: Path, manifest: dict, session: dict, storage_dtype: str,
            progress: bool, on_batch, condition) -> int:
    """Forward ``batches`` and write each into the memmaps, committing the manifest per batch; return n done."""
    from tqdm.auto import tqdm

    n, start = int(manifest["n_stimuli"]), int(manifest["progress"]["n_done"])
    store_np = STORAGE_DTYPES[storage_dtype]
    store_t = torch.float16 if storage_dtype == "float16" else torch.float32
    arrays, emb_mm = _open_existing(folder, manifest, mode="r+") if start > 0 else ({}, None)
    t0 = time.perf_counter()
    bar = tqdm(total=n, initial=start, unit="img", desc=f"record {condition or lm.name}", disable=not progress)
    done = start
    try:
        with torch.inference_mode(), cap:
            for j, (idx, outs, emb) in enumerate(_forward_batches(lm, cap, batches)):
                a, b = int(idx[0]), int(idx[-1]) + 1
                if b - a != len(idx) or a != done:
                    raise RuntimeError(f"batches out of order: expected stimuli from {done}, got {idx[:3]}...")
                host = {nm: _to_storage(t, store_t, nm) for nm, t in outs.items()}
                emb_np = emb.float().cpu().numpy()
                if emb_mm is None:
                    arrays, emb_mm = _allocate(folder, manifest, host, emb_np, n, store_np)
                    _write_manifest(folder, manifest)
                for nm, arr in host.items():
                    arrays[nm][a:b] = arr
                emb_mm[a:b] = emb_np
                for mm in (*arrays.values(), emb_mm):
                    mm.flush()
                done = b
                rate = (done - start) / max(time.perf_counter() - t0, 1e-9)
                manifest["progress"]["n_done"] = done
                session.update(n_done=done, images_per_s=round(rate, 3), updated=_now())
                manifest["updated"] = session["updated"]
                _write_manifest(folder, manifest)
                bar.update(b - a)
                if on_batch is not None:
                    on_batch({"condition": condition, "batch": j, "n_done": done, "n_total": n, "images_per_s": rate})
    finally:
        bar.close()
        for mm in (*arrays.values(), *([emb_mm] if emb_mm is not None else [])):
            mm.flush()
        del arrays, emb_mm
    return done


def _to_storage(t: torch.Tensor, store_t: torch.dtype, name: str) -> np.ndarray:
    out = t.to(device="cpu", dtype=store_t)
    if store_t == torch.float16 and not bool(torch.isfinite(out).all()) and bool(torch.isfinite(t).all()):
        raise ValueError(
            f"storage_dtype='float16' overflows for {name} (|x| max {float(t.abs().max()):.4g} > 65504); "
            "use storage_dtype='float32'"
        )
    return out.numpy()


def _allocate(folder: Path, manifest: dict, host: Mapping[str, np.ndarray], emb: np.ndarray, n: int, store_np):
    from numpy.lib.format import open_memmap

    from helpers.paths import require_free_space

    item = np.dtype(store_np).itemsize
    need = sum(n * int(np.prod(a.shape[1:])) * item for a in host.values()) + n * emb.shape[1] * 4
    require_free_space(folder, need, f"recording {len(host)} layers of {n} stimuli")
    arrays = {}
    for nm, arr in host.items():
        shape = (n, *arr.shape[1:])
        arrays[nm] = open_memmap(folder / recording_array(nm), mode="w+", dtype=store_np, shape=shape)
        manifest["arrays"][nm] = {
            "file": recording_array(nm),
            "shape": list(shape),
            "dtype": np.dtype(store_np).name,
            "hook": hook_name(nm),
            "description": describe(nm),
            "axes": _axes(manifest["tokens"], len(shape)),
        }
    emb_mm = open_memmap(folder / EMBEDDINGS, mode="w+", dtype=np.float32, shape=(n, emb.shape[1]))
    manifest["embeddings"] = {
        "file": EMBEDDINGS,
        "shape": [n, int(emb.shape[1])],
        "dtype": "float32",
        "description": "final image embedding (encode_image, L2-normalised), same forward pass",
    }
    return arrays, emb_mm


def _axes(tokens: str, ndim: int) -> list[str]:
    if ndim == 2:
        return ["stimulus", "neuron"]
    return ["stimulus", "patch" if tokens == "patches" else "token", "neuron"]


def _open_existing(folder: Path, manifest: Mapping, mode: str = "r"):
    arrays = {}
    for nm, spec in manifest["arrays"].items():
        arrays[nm] = _open_checked(folder / spec["file"], spec, mode)
    emb = manifest.get("embeddings")
    emb_mm = _open_checked(folder / emb["file"], emb, mode) if emb else None
    return arrays, emb_mm


def _open_checked(path: Path, spec: Mapping, mode: str) -> np.memmap:
    if not path.is_file():
        raise RecordingMismatchError(f"{path} is listed in the manifest but missing; pass overwrite=True to re-record")
    try:
        arr = np.load(path, mmap_mode=mode, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:  # numpy's own advice here would be an unsafe allow_pickle=True
        raise CorruptRecordingError(f"{path} is not a readable .npy array ({type(e).__name__}); "
                                    "re-record with overwrite=True (make study FORCE=1)") from None
    if list(arr.shape) != list(spec["shape"]) or arr.dtype.name != spec["dtype"]:
        raise RecordingMismatchError(
            f"{path} is {arr.shape} {arr.dtype}, manifest says {tuple(spec['shape'])} {spec['dtype']}; "
            "pass overwrite=True to re-record"
        )
    return arr


class Recording(NamedTuple):
    """A loaded recording: ``manifest, arrays, embeddings = load_recording(...)``."""

    manifest: dict
    arrays: dict[str, np.ndarray]
    embeddings: np.ndarray


def load_recording(path: str | Path, *, allow_incomplete: bool = False, mmap_mode: str | None = "r") -> Recording:
    """Open a recording folder.

    Parameters:
    path : str or Path — A recording folder (e.g. ``paths.Run(run).recordings("model")``).
    allow_incomplete : bool — Also open an unfinished recording; arrays are then cut to the ``progress.n_done``
        stimuli recorded so far.
    mmap_mode : {"r", "c", None} — Passed to :func:`numpy.load`; ``"r"`` (default) maps read-only without reading the
        data into RAM, ``"c"`` is copy-on-write (the file never changes), ``None`` loads into memory. Writable modes
        are refused.

    Returns:
    Recording — ``(manifest, {layer: (n, [tokens,] neurons) array}, (n, embed_dim) embeddings)``; layers in recorded
        (natural) order.

    Raises:
    FileNotFoundError — No manifest.
    IncompleteRecordingError — The recording has not finished and ``allow_incomplete`` is False.
    RecordingMismatchError — A file is missing or its shape/dtype differs from the manifest.
    """
    if mmap_mode not in READ_MODES:
        raise ValueError(f"mmap_mode must be one of {READ_MODES} (load_recording only reads), got {mmap_mode!r}")
    folder = Path(path)
    man = read_manifest(folder)
    n_done = int(man["progress"]["n_done"])
    if not man.get("complete"):
        if not allow_incomplete:
            raise IncompleteRecordingError(
                f"recording in {folder} is incomplete ({n_done}/{man['n_stimuli']} stimuli); resume it by calling "
                "record() again with the same arguments, or pass allow_incomplete=True"
            )
        if not man.get("arrays"):
            return Recording(man, {}, np.zeros((0, 0), np.float32))
    arrays, emb = _open_existing(folder, man, mode="r")
    if mmap_mode is None:
        arrays = {k: np.array(v) for k, v in arrays.items()}
        emb = np.array(emb)
    elif mmap_mode != "r":
        arrays, emb = _open_existing(folder, man, mode=mmap_mode)
    if not man.get("complete"):
        arrays = {k: v[:n_done] for k, v in arrays.items()}
        emb = emb[:n_done]
    ordered = {k: arrays[k] for k in man["layers"] if k in arrays}
    return Recording(man, ordered, emb)


# =========================================================================== conditions


def condition_specs(weights: str, *, include_random: bool = True, seed: int = 0, random_seed: int = 1) -> dict:
    """Which weights and seed each condition uses.

    ``"model"`` uses ``weights`` (and ``seed`` when ``weights="random"``);
    ``"random"`` is the blog's control, the same architecture with open_clip's
    random initialisation after ``torch.manual_seed(random_seed)``. When the
    "model" itself is random, the two conditions are two different random
    draws: a pipeline check, not a scientific comparison.

    Returns:
    dict condition -> {"weights": str, "seed": int}

    Raises:
    ValueError — ``weights="random"`` with ``seed == random_seed`` (the control would be identical to the model).
    """
    from helpers.models import RANDOM

    specs = {"model": {"weights": weights, "seed": int(seed)}}
    if include_random:
        if weights == RANDOM and int(seed) == int(random_seed):
            raise ValueError(
                f"random_seed must differ from seed when weights='random' (both {seed}): the control "
                "would be the same network"
            )
        specs["random"] = {"weights": RANDOM, "seed": int(random_seed)}
    return specs


def record_conditions(
    model: str,
    weights: str,
    stim,
    run_dir: str | Path,
    *,
    layers: str | Sequence[str] = DEFAULT_LAYERS,
    tokens: str = "cls",
    dtype: str = "auto",
    storage_dtype: str = "float32",
    batch_size: int = 64,
    include_random: bool = True,
    seed: int = 0,
    random_seed: int = 1,
    device: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
    num_workers: int = 0,
) -> dict[str, dict]:
    """Record the chosen weights and (by default) the random-weights control.

    Each condition goes to ``paths.Run(run_dir).recordings(condition)``; models
    are loaded one at a time (see :func:`condition_specs` for seeds). Other
    parameters as in :func:`record` and :func:`helpers.models.load_model`.

    Returns:
    dict condition -> manifest
    """
    import gc

    from helpers.models import load_model

    out = {}
    for cond, spec in condition_specs(weights, include_random=include_random, seed=seed, random_seed=random_seed).items():
        lm = load_model(model, spec["weights"], device=device, dtype=dtype, seed=spec["seed"])
        out[cond] = record(
            lm,
            stim,
            paths.Run(run_dir).recordings(cond),
            layers=layers,
            tokens=tokens,
            storage_dtype=storage_dtype,
            batch_size=batch_size,
            overwrite=overwrite,
            progress=progress,
            num_workers=num_workers,
            condition=cond,
        )
        del lm
        gc.collect()
    return out


def recording_summary(run_dir: str | Path, conditions: Sequence[str] | None = None):
    """One row per recorded array: condition, layer, hook, shape, dtype, MB, complete.

    Returns:
    pandas.DataFrame
    """
    import pandas as pd

    run = paths.Run(run_dir, create=False)
    rows = []
    for cond in conditions or paths.CONDITIONS:
        folder = run.recordings(cond)
        if not run.recorded(cond):
            continue
        man = read_manifest(folder)
        specs = list(man.get("arrays", {}).items())
        if man.get("embeddings"):
            specs.append(("embeddings", {**man["embeddings"], "hook": "image.hook_embedding"}))
        for name, spec in specs:
            nbytes = int(np.prod(spec["shape"])) * np.dtype(spec["dtype"]).itemsize
            rows.append(
                {
                    "condition": cond,
                    "layer": name,
                    "hook": spec.get("hook", ""),
                    "shape": " x ".join(str(s) for s in spec["shape"]),
                    "dtype": spec["dtype"],
                    "MB": round(nbytes / 2**20, 2),
                    "complete": bool(man.get("complete")),
                }
            )
    return pd.DataFrame(rows, columns=["condition", "layer", "hook", "shape", "dtype", "MB", "complete"])


# =========================================================================== checks and summaries


def _flat(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a.reshape(a.shape[0], -1)


def agreement(
    reference: Mapping[str, np.ndarray],
    test: Mapping[str, np.ndarray],
    ref_embeddings: np.ndarray | None = None,
    test_embeddings: np.ndarray | None = None,
):
    """How closely a test recording reproduces a reference one, per layer.

    Parameters:
    reference, test : dict name -> (n, ...) arrays — Same stimuli, same layers.
    ref_embeddings, test_embeddings : (n, d) arrays, optional — L2-normalised embeddings; adds an ``embedding`` row
        with cosines.

    Returns:
    pandas.DataFrame — Per layer: ``pearson_r`` over all (stimulus, unit) values; ``neuron_r_median`` /
        ``neuron_r_min``, the per-unit correlation across stimuli (what tuning maps depend on); ``max_abs_diff``;
        ``rel_rmse`` (RMS difference over the reference's SD). The ``embedding`` row adds ``cosine_mean`` and
        ``cosine_min`` over stimuli.
    """
    import pandas as pd

    pairs = [(k, reference[k], test[k]) for k in reference]
    if ref_embeddings is not None and test_embeddings is not None:
        pairs.append(("embedding", ref_embeddings, test_embeddings))
    rows = []
    for name, a, b in pairs:
        a, b = _flat(a), _flat(b)
        if a.shape != b.shape:
            raise ValueError(f"{name}: shapes differ {a.shape} vs {b.shape}")
        r_all = float(np.corrcoef(a.ravel(), b.ravel())[0, 1])
        za, zb = a - a.mean(0), b - b.mean(0)
        den = np.sqrt((za**2).sum(0) * (zb**2).sum(0))
        with np.errstate(invalid="ignore", divide="ignore"):
            r_unit = np.where(den > 0, (za * zb).sum(0) / den, np.nan)
        row = {
            "layer": name,
            "hook": hook_name(name) if name != "embedding" else "image.hook_embedding",
            "pearson_r": r_all,
            "neuron_r_median": float(np.nanmedian(r_unit)) if np.isfinite(r_unit).any() else np.nan,
            "neuron_r_min": float(np.nanmin(r_unit)) if np.isfinite(r_unit).any() else np.nan,
            "max_abs_diff": float(np.abs(a - b).max()),
            "rel_rmse": float(np.sqrt(((a - b) ** 2).mean()) / max(a.std(), 1e-30)),
            "cosine_mean": np.nan,
            "cosine_min": np.nan,
        }
        if name == "embedding":
            cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
            row.update(cosine_mean=float(cos.mean()), cosine_min=float(cos.min()))
        rows.append(row)
    return pd.DataFrame(rows)


def subset_indices(n_total: int, n: int) -> np.ndarray:
    """``n`` evenly spaced stimulus indices out of ``n_total`` (all if fewer)."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    return np.unique(np.linspace(0, n_total - 1, min(n, n_total)).round().astype(int))


def dtype_agreement(
    model: str,
    weights: str,
    stim,
    *,
    layers: str | Sequence[str] = DEFAULT_LAYERS,
    tokens: str = "cls",
    n: int = 32,
    test_dtype: str = "bfloat16",
    seed: int = 0,
    batch_size: int = 16,
    device: str = "auto",
):
    """Agreement of a reduced-precision compute dtype with float32 on a small subset.

    Loads the model twice (float32 and ``test_dtype``, same weights), records
    ``n`` evenly spaced stimuli in memory with both and compares them with
    :func:`agreement` (per-layer correlations, embedding cosine).

    Returns:
    pandas.DataFrame — See :func:`agreement`; ``n`` and ``test_dtype`` columns added.
    """
    import gc

    from helpers.models import load_model

    idx = subset_indices(len(stim), n)
    res = {}
    for dt in ("float32", test_dtype):
        lm = load_model(model, weights, device=device, dtype=dt, seed=seed)
        res[dt] = record_arrays(lm, stim, layers=layers, tokens=tokens, indices=idx, batch_size=batch_size)
        del lm
        gc.collect()
    (ra, re_), (ta, te) = res["float32"], res[test_dtype]
    df = agreement(ra, ta, re_, te)
    df.insert(2, "n", len(idx))
    df.insert(3, "test_dtype", test_dtype)
    return df


def activation_stats(
    recordings: Mapping[str, Recording | Mapping[str, np.ndarray]],
    *,
    quantiles: Sequence[float] = (0.01, 0.25, 0.5, 0.75, 0.99),
    max_stimuli: int = 512,
):
    """Distribution of activation values per layer and condition.

    Parameters:
    recordings : dict condition -> Recording (or dict layer -> array)
    quantiles : sequence of float in [0, 1]
    max_stimuli : int — At most this many evenly spaced stimuli are read per layer (bounds RAM for token-resolved
        recordings).

    Returns:
    pandas.DataFrame — Columns ``condition, layer, label, n_values, mean, sd`` and one ``q<percent>`` column per
        quantile (e.g. ``q1``, ``q50``, ``q99``).
    """
    import pandas as pd

    rows = []
    for cond, rec in recordings.items():
        arrays = rec.arrays if isinstance(rec, Recording) else rec
        for name, arr in arrays.items():
            v = np.asarray(arr[subset_indices(arr.shape[0], max_stimuli)], dtype=np.float64).ravel()
            qs = np.quantile(v, quantiles)
            row = {"condition": cond, "layer": name, "label": label(name), "n_values": v.size,
                   "mean": float(v.mean()), "sd": float(v.std())}
            row.update({f"q{100 * q:g}": float(x) for q, x in zip(quantiles, qs)})
            rows.append(row)
    return pd.DataFrame(rows)
