"""Reversible lesions of layers and neurons: the Perturb stage (blog "Perturb"; narrated in notebooks/04_perturb).

1. Layer lesions (:func:`layer_lesion_study`): each unit's parameters zeroed (:func:`lesion`; ``"all"`` also
   zeroes biases, which makes a residual block an exact identity; ``"weights"`` keeps biases and LayerNorm shifts).
2. Targeted neuron lesions (:func:`targeted_lesion_study`): channels of block ``k``'s attention output zeroed per
   stimulus (:func:`ablate_channels`, all tokens by default), chosen by :data:`RULES` from leave-one-out maps.
3. Spatial lesions (:func:`spatial_lesion_study`): a region's neurons against matched controls; localisation is a
   difference in differences (:func:`localisation_did`), the blog-literal test kept beside it.

Performance: fraction of stimuli whose target prompt beats every other (ties fail); margin: target logit minus
the best other. Speed without changing numbers: :func:`build_residual_cache` keeps the input of chosen blocks
(RAM or a memmap) and a lesion at block ``k`` runs blocks ``k..`` only (:func:`forward_from_block`, equal to
``encode_image`` to 1e-5); text lesions reuse the image embeddings; the last block runs queries, attention output and MLP for the class token
only (:func:`block_cls`); a block lesioned in mode ``"all"`` (an identity) is not run; neuron lesions at block ``k``
start from its attention output, computed once per batch (:func:`forward_from_attention`); no ``torch.compile`` (it
ignores later hooks).
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from helpers import hooks
from helpers.names import block_module, unit_label
from helpers.checks import check_int
from helpers.paths import require_free_space
from helpers.stimuli import check_batch_size

__all__ = [
    "LESION_MODES",
    "DEFAULT_PROPORTIONS",
    "RULES",
    "REGIONS",
    "lesion_parameters",
    "lesion",
    "LesionUnit",
    "lesion_units",
    "ablate_channels",
    "Tower",
    "visual_tower",
    "forward_from_block",
    "block_cls",
    "BlockAttention",
    "block_attention",
    "forward_from_attention",
    "embed",
    "ResidualCache",
    "build_residual_cache",
    "lesion_indices",
    "ZeroShotTask",
    "zero_shot_task",
    "embed_from_cache",
    "embed_images",
    "layer_lesion_study",
    "attention_cls",
    "recorded_attention_cls",
    "FieldMaps",
    "field_maps",
    "HeldOutValues",
    "held_out_values",
    "neuron_ranks",
    "n_ablated",
    "stimulus_pairs",
    "selection_specificity",
    "targeted_lesion_study",
    "summarise_targeted",
    "OPPOSITE_REGIONS",
    "LESION_KINDS",
    "DEFICIT_METRICS",
    "region_mask",
    "opposite_region",
    "region_label",
    "region_contrast",
    "region_neurons",
    "NeuronSet",
    "matched_lesions",
    "spatial_lesion_study",
    "performance_maps",
    "localisation_test",
    "localisation_did",
    "lesion_values",
    "localisation_table",
    "dissociation_table",
    "double_dissociation",
    "lesion_maps",
]

#: Lesion modes of :func:`lesion`.
LESION_MODES = ("weights", "all")

#: The blog's proportions of ablated neurons (x axis of the targeted-lesion figure).
DEFAULT_PROPORTIONS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)

#: Selection rules of the targeted-lesion study (:func:`neuron_ranks`); "Targeted_raw" is the blog's literal rule.
RULES = ("Targeted", "Targeted_Abs", "Targeted_raw", "Random")

#: Named regions of the visual field (image convention: y grows downwards, so
#: "lower" is the bottom half of the image = the high row indices of a map).
REGIONS = (
    "lower-left",
    "lower-right",
    "upper-left",
    "upper-right",
    "left",
    "right",
    "upper",
    "lower",
)

#: The opposite of each named region: quadrants reflect through the image
#: centre, halves mirror. The opposite of an explicit mask is its complement.
OPPOSITE_REGIONS = {
    "lower-left": "upper-right",
    "upper-right": "lower-left",
    "lower-right": "upper-left",
    "upper-left": "lower-right",
    "left": "right",
    "right": "left",
    "upper": "lower",
    "lower": "upper",
}

#: Kinds of regional lesion: the region's neurons and its two matched controls.
LESION_KINDS = ("region", "opposite", "random")

TOKENS = ("all", "cls")


# =========================================================================== layer lesions


def _check_mode(mode: str) -> str:
    if mode not in LESION_MODES:
        raise ValueError(f"mode must be one of {LESION_MODES}, got {mode!r}")
    return mode


def _is_bias(param_name: str) -> bool:
    """A parameter is a bias when its own name (last dotted part) ends in ``bias``."""
    return param_name.rsplit(".", 1)[-1].endswith("bias")


def lesion_parameters(module: torch.nn.Module, mode: str = "all") -> list[tuple[str, torch.nn.Parameter]]:
    """Parameters that a lesion in ``mode`` sets to zero.

    Parameters:
    module : torch.nn.Module
    mode : {"weights", "all"} — ``"weights"``: everything but biases (LayerNorm: the scale ``weight`` only);
        ``"all"``: every parameter (buffers never). A bias is a name ending in ``bias`` (``in_proj_bias``, ``bias_k``).

    Returns:
    list of (name relative to ``module``, parameter)
    """
    _check_mode(mode)
    return [(n, p) for n, p in module.named_parameters() if mode == "all" or not _is_bias(n)]


def _resolve_modules(model: torch.nn.Module, units: str | Sequence[str]) -> list[tuple[str, torch.nn.Module]]:
    names = [units] if isinstance(units, str) else list(units)
    if not names:
        raise ValueError("units must name at least one module, got an empty list")
    modules = dict(model.named_modules())
    out = []
    for name in names:
        if name not in modules:
            close = [m for m in modules if m.endswith(name) or name in m][:5]
            raise ValueError(
                f"units: no module named {name!r} in the model"
                + (f"; did you mean one of {close}?" if close else "; see lesion_units(model)")
            )
        out.append((name, modules[name]))
    return out


@contextlib.contextmanager
def lesion(model: torch.nn.Module, units: str | Sequence[str], mode: str = "all") -> Iterator[list[str]]:
    """Zero the parameters of one or more modules; restore them bit for bit on exit.

    The blog's layer lesion: "every layer within the model is lesioned by
    replacing the weights with 0 ... before restoring the model weights".
    Edits are in place (``zero_`` / ``copy_`` under ``no_grad``), so they also
    reach a model that was compiled earlier. The originals are restored in a
    ``finally`` clause: on normal exit, on an exception and on
    ``KeyboardInterrupt``. Lesions nest (inner ones restore first).

    Parameters:
    model : torch.nn.Module
    units : str or sequence of str — Qualified module names, e.g. ``"visual.transformer.resblocks.9"``,
        ``"transformer.resblocks.3.mlp"``, ``"visual.conv1"``.
    mode : {"weights", "all"} — What to zero (:func:`lesion_parameters`).

    Yields:
    list of str — Qualified names of the zeroed parameters.

    Examples:
    >>> with lesion(lm.model, "visual.transformer.resblocks.9"):  # doctest: +SKIP
    ...     feats = lm.model.encode_image(x)
    """
    _check_mode(mode)
    seen: dict[int, tuple[str, torch.nn.Parameter]] = {}
    for uname, mod in _resolve_modules(model, units):
        for pname, p in lesion_parameters(mod, mode):
            seen.setdefault(id(p), (f"{uname}.{pname}", p))
    saved = [(name, p, p.detach().clone()) for name, p in seen.values()]
    try:
        with torch.no_grad():
            for _, p, _ in saved:
                p.zero_()
        yield [name for name, _, _ in saved]
    finally:
        with torch.no_grad():
            for _, p, original in saved:
                p.copy_(original)


@dataclass(frozen=True)
class LesionUnit:
    """One lesionable unit.

    Attributes:
    name : str — Qualified module name (what :func:`lesion` takes).
    tower : {"visual", "text"}
    label : str — Short label for tables and figures, e.g. ``"conv1"``, ``"resblock 9"``, ``"resblock 9 attn"``.
    block : int or None — Residual block index; ``None`` for ``visual.conv1`` (before block 0).
    part : {"conv1", "block", "attn", "mlp"}
    """

    name: str
    tower: str
    label: str
    block: int | None
    part: str


def _resblocks(model: torch.nn.Module, tower: str) -> torch.nn.ModuleList:
    if tower == "visual":
        return model.visual.transformer.resblocks
    return model.transformer.resblocks


def lesion_units(model: torch.nn.Module, sublayers: bool = False) -> list[LesionUnit]:
    """Every lesionable unit of both towers of an open_clip CLIP model.

    Order: ``visual.conv1``, visual resblocks 0..N-1, text resblocks 0..M-1.
    With ``sublayers=True`` each block is followed by its ``attn`` and ``mlp``.

    Parameters:
    model : open_clip CLIP
    sublayers : bool — Also list the attention and MLP sublayers of every block separately.

    Returns:
    list of LesionUnit
    """
    units = [LesionUnit("visual.conv1", "visual", unit_label(None, "conv1"), None, "conv1")]
    for tower in ("visual", "text"):
        for i in range(len(_resblocks(model, tower))):
            parts = ("block", "attn", "mlp") if sublayers else ("block",)
            units += [LesionUnit(block_module(i, None if part == "block" else part, tower), tower, unit_label(i, part),
                                 i, part) for part in parts]
    return units


# =========================================================================== neuron lesions


def _check_tokens(tokens: str) -> str:
    if tokens not in TOKENS:
        raise ValueError(f"tokens must be one of {TOKENS} (which tokens of a lesioned channel are zeroed), got {tokens!r}")
    return tokens


def _mask_tensor(mask: torch.Tensor | np.ndarray) -> torch.Tensor:
    """``mask`` as a (B, C) or (1, C) bool tensor (see :func:`ablate_channels`)."""
    m = torch.as_tensor(np.asarray(mask) if isinstance(mask, np.ndarray) else mask, dtype=torch.bool)
    if m.ndim == 1:
        m = m[None, :]
    if m.ndim != 2:
        raise ValueError(f"mask must have shape (B, C) or (C,), got {tuple(m.shape)}")
    return m


def _zero_channels(out: torch.Tensor, m: torch.Tensor, tokens: str) -> torch.Tensor:
    """``out`` (B, T, C) or (B, C) with the channels of (B, C) or (1, C) bool ``m`` set to 0 (token 0 only: "cls")."""
    if out.shape[-1] != m.shape[-1]:
        raise ValueError(f"mask has {m.shape[-1]} channels but the module outputs {out.shape[-1]}")
    if m.shape[0] not in (1, out.shape[0]):
        raise ValueError(f"mask is for a batch of {m.shape[0]} samples but the forward has {out.shape[0]}")
    mm = m.to(out.device)
    if out.ndim == 3:
        mm = mm[:, None, :]
        if tokens == "cls":
            tok = torch.zeros(out.shape[1], dtype=torch.bool, device=out.device)
            tok[0] = True
            mm = mm & tok[None, :, None]
    return out.masked_fill(mm, 0)


@contextlib.contextmanager
def ablate_channels(
    module: torch.nn.Module, mask: torch.Tensor | np.ndarray, tokens: str = "all"
) -> Iterator[None]:
    """Zero chosen output channels of ``module``, per sample, while inside the block.

    A forward hook (:func:`helpers.hooks.edit_outputs`; a tuple output is edited
    through its first element) sets the masked channels to 0. The hook is
    removed on exit, also on error.

    Parameters:
    module : torch.nn.Module — E.g. ``model.visual.transformer.resblocks[9].attn``. Batch-first output ``(B, T, C)``
        (open_clip >= 2.24 ViTs are batch-first) or ``(B, C)``.
    mask : bool array, shape (B, C) or (C,) — ``True`` = ablate that channel for that sample; ``(C,)`` applies to
        every sample. ``B`` must equal the batch size of every forward run inside.
    tokens : {"all", "cls"} — ``"all"``: zero the channel at every token; ``"cls"``: token 0 only.
    """
    _check_tokens(tokens)
    m = _mask_tensor(mask)

    def zero(name, out):
        return _zero_channels(out, m, tokens)

    with hooks.edit_outputs({"": module}, zero):
        yield


# =========================================================================== truncated forward


@dataclass(frozen=True)
class Tower:
    """A residual image tower cut into pieces for truncated forwards.

    Attributes:
    blocks : list of nn.Module — Residual blocks in order; ``blocks[k](x)`` maps the input of block k to the input of
        block k+1. Neuron lesions hook ``blocks[k].attn``.
    forward : callable — images -> unnormalised embedding; the reference full forward.
    head : callable — output of the last block -> unnormalised embedding.
    dtype, device : the tower's parameter dtype and device.
    cls_head : bool
        The head reads the class token (token 0) only, and the blocks are open_clip
        ``ResidualAttentionBlock``\ s: :func:`forward_from_block` then runs the last
        block for the class token alone (:func:`block_cls`).
    """

    blocks: Sequence[torch.nn.Module]
    forward: Callable[[torch.Tensor], torch.Tensor]
    head: Callable[[torch.Tensor], torch.Tensor]
    dtype: torch.dtype
    device: torch.device
    cls_head: bool = False

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)


def visual_tower(model: torch.nn.Module) -> Tower:
    """The :class:`Tower` of an open_clip ViT (``model.visual``).

    ``forward`` is ``model.visual`` (``encode_image`` without normalising);
    ``head`` is ``visual._pool`` (``ln_post`` + class token) then ``@ proj``.

    Raises:
    ValueError — Not an open_clip ViT, or a sequence-first transformer (old open_clip): the cached layout would then
        not be (batch, tokens, channels).
    """
    visual = getattr(model, "visual", None)
    tr = getattr(visual, "transformer", None)
    if tr is None or not hasattr(tr, "resblocks") or not hasattr(visual, "_pool"):
        raise ValueError("model must be an open_clip CLIP with a VisionTransformer (model.visual.transformer.resblocks)")
    hooks.require_batch_first(tr)
    if getattr(visual, "output_tokens", False):
        raise ValueError("model.visual.output_tokens must be False")

    def forward(images: torch.Tensor) -> torch.Tensor:
        return visual(images)

    def head(x: torch.Tensor) -> torch.Tensor:
        pooled, _ = visual._pool(x)
        return pooled @ visual.proj if visual.proj is not None else pooled

    p = next(visual.parameters())
    cls_head = (getattr(visual, "attn_pool", None) is None and getattr(visual, "pool_type", None) == "tok"
                and all(_is_residual_attention_block(b) for b in tr.resblocks))
    return Tower(list(tr.resblocks), forward, head, p.dtype, p.device, cls_head)


def _is_residual_attention_block(blk: torch.nn.Module) -> bool:
    """An open_clip self-attention ``ResidualAttentionBlock`` (what :func:`block_cls` reimplements for one token)."""
    from open_clip.transformer import ResidualAttentionBlock

    return type(blk) is ResidualAttentionBlock and not hasattr(blk, "ln_1_kv")


def block_cls(blk: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Class-token row of an open_clip ``ResidualAttentionBlock``'s output, (B, 1, C).

    Keys and values are computed for all T tokens of ``x`` (B, T, C), queries, the
    attention output (``blk.attn``, so neuron-lesion hooks still apply) and the MLP
    for token 0 only: about a sixth of the block's work. Equal to ``blk(x)[:, :1]``
    up to float summation order (tests: <= 1e-5 in fp32).
    """
    h = blk.ln_1(x)
    y = x[:, :1] + blk.ls_1(blk.attention(q_x=h[:, :1], k_x=h, v_x=h))
    return y + blk.ls_2(blk.mlp(blk.ln_2(y)))


def _check_block(tower: Tower, k: int, what: str = "block") -> int:
    return check_int(what, k, 0, tower.n_blocks - 1)


def forward_from_block(tower: Tower, x: torch.Tensor, start: int) -> torch.Tensor:
    """Run blocks ``start..N-1`` and the head on the input of block ``start``.

    Parameters:
    x : tensor (B, T, C) — The residual stream entering block ``start`` (e.g. from a cache).
    start : int — 0..N-1.

    Returns:
    tensor (B, E), unnormalised embedding in the tower's dtype.

    With ``tower.cls_head`` the last block runs for the class token only
    (:func:`block_cls`): nothing else of it reaches the embedding.
    """
    _check_block(tower, start, "start")
    last = tower.n_blocks - 1
    for blk in tower.blocks[start:last]:
        x = blk(x)
    return tower.head(block_cls(tower.blocks[last], x) if tower.cls_head else tower.blocks[last](x))


@dataclass(frozen=True)
class BlockAttention:
    """Block ``block``'s input and unlesioned attention output: where lesioned forwards start (:func:`forward_from_attention`).

    Attributes:
    block : int
    tokens : {"all", "cls"} — The token scope of the lesions that will start here (:func:`ablate_channels`).
    x : tensor (B, T, C) — The block's input.
    attn : tensor (B, T, C), or (B, 1, C) when only the class token's row is needed — ``blocks[block].attn``'s output
        (after ``out_proj``, before ``ls_1``): what :func:`ablate_channels` zeroes.
    after : tensor (B, T, C) or None — The unlesioned block output; with ``tokens="cls"`` its rows 1..T-1 are those of
        every lesioned output (attention, LayerNorms and MLP act on each token's own row).
    """

    block: int
    tokens: str
    x: torch.Tensor
    attn: torch.Tensor
    after: torch.Tensor | None = None


@torch.no_grad()
def block_attention(tower: Tower, x: torch.Tensor, block: int, tokens: str = "all") -> BlockAttention:
    """Compute block ``block``'s unlesioned attention output once for lesions with token scope ``tokens``.

    ``x`` (B, T, C) is the block's input (e.g. from the cache). The attention output
    is kept for all tokens, or for the class token only when nothing else of it can
    reach the embedding or be lesioned (last block with ``tower.cls_head``, as
    :func:`block_cls`; ``tokens="cls"``, where the unlesioned block output is kept
    too). Memory: one (B, T, C) tensor or two, per batch. Requires an open_clip
    ``ResidualAttentionBlock``, whose forward :func:`forward_from_attention` reimplements.
    """
    _check_block(tower, block)
    _check_tokens(tokens)
    blk = tower.blocks[block]
    if not _is_residual_attention_block(blk):
        raise ValueError(f"block {block} must be an open_clip ResidualAttentionBlock, got {type(blk).__name__}")
    h = blk.ln_1(x)
    if block == tower.n_blocks - 1 and tower.cls_head:
        return BlockAttention(block, tokens, x, blk.attention(q_x=h[:, :1], k_x=h, v_x=h))
    attn = blk.attention(q_x=h)  # the call of ResidualAttentionBlock.forward
    if tokens == "all":
        return BlockAttention(block, tokens, x, attn)
    y = x + blk.ls_1(attn)
    return BlockAttention(block, tokens, x, attn[:, :1], y + blk.ls_2(blk.mlp(blk.ln_2(y))))


@torch.no_grad()
def forward_from_attention(tower: Tower, start: BlockAttention, mask: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
    """Unnormalised embedding (B, E) with ``mask``'s channels of ``blocks[start.block].attn`` zeroed.

    Equal (to float summation order) to :func:`forward_from_block` from ``start.x``
    inside ``ablate_channels(blocks[block].attn, mask, start.tokens)``, without
    recomputing the attention: the block's output is ``x + ls_1(mask ⊙ attn)``, then
    ``+ ls_2(mlp(ln_2(.)))``, as ``ResidualAttentionBlock.forward``; then blocks
    ``block+1..`` run as in :func:`forward_from_block`. ``mask``: (B, C) or (C,) bool, None = no lesion.
    """
    blk = tower.blocks[start.block]
    a = start.attn if mask is None else _zero_channels(start.attn, _mask_tensor(mask), start.tokens)
    y = start.x[:, : a.shape[1]] + blk.ls_1(a)
    y = y + blk.ls_2(blk.mlp(blk.ln_2(y)))
    if start.after is not None:  # only the class token's row changed
        y = torch.cat([y, start.after[:, 1:]], dim=1)
    return tower.head(y) if start.block == tower.n_blocks - 1 else forward_from_block(tower, y, start.block + 1)


def _lesioned_embeddings(tower: Tower, x: torch.Tensor, block: int, tokens: str, reuse_attention: bool):
    """mask -> (B, E) float32 embeddings of the batch ``x`` (input of ``block``) with ``mask``'s channels of its attention
    output zeroed: from the attention output computed once (:func:`forward_from_attention`) when ``reuse_attention``
    and the block is an open_clip ``ResidualAttentionBlock``, else through :func:`ablate_channels`."""
    if reuse_attention and _is_residual_attention_block(tower.blocks[block]):
        start = block_attention(tower, x, block, tokens)
        return lambda m: embed(forward_from_attention(tower, start, m)).cpu().numpy()

    def straight(m):
        with ablate_channels(tower.blocks[block].attn, m, tokens):
            return embed(forward_from_block(tower, x, block)).cpu().numpy()

    return straight


def embed(features: torch.Tensor) -> torch.Tensor:
    """L2-normalise (in the compute dtype, as ``encode_image(normalize=True)``) and cast to float32."""
    return F.normalize(features, dim=-1).float()


# =========================================================================== residual cache


def _np_storage_dtype(dtype: torch.dtype) -> np.dtype:
    """numpy dtype holding ``dtype`` bit for bit (bfloat16 is stored as its int16 bits)."""
    if dtype == torch.bfloat16:
        return np.dtype(np.int16)
    return torch.empty((), dtype=dtype).numpy().dtype


@dataclass
class ResidualCache:
    """Inputs of chosen residual blocks for a set of stimuli, from one unlesioned pass.

    Attributes:
    indices : (n,) int array — Stimulus ids, in cache order (row ``i`` is stimulus ``indices[i]``).
    embeddings : (n, E) float32 array — Baseline (unlesioned) L2-normalised image embeddings.
    blocks : tuple of int — Blocks whose input is stored.
    dtype : torch.dtype — Compute dtype; stored bit for bit (bfloat16 as int16 bits).
    directory : Path or None — Where the ``block_XX.npy`` memmaps live (``None``: in RAM).
    """

    indices: np.ndarray
    embeddings: np.ndarray
    blocks: tuple[int, ...]
    dtype: torch.dtype
    directory: Path | None = None
    _store: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def n(self) -> int:
        return int(self.indices.shape[0])

    def block_input(self, k: int, rows: slice | np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
        """Cached input of block ``k`` for cache rows ``rows``: tensor (b, T, C) in :attr:`dtype`."""
        if k not in self._store:
            raise ValueError(f"block {k} is not cached (cached blocks: {list(self.blocks)}); rebuild with blocks including {k}")
        a = np.ascontiguousarray(self._store[k][rows])
        t = torch.from_numpy(a)
        if self.dtype == torch.bfloat16:
            t = t.view(torch.bfloat16)
        return t.to(device)

    def nbytes(self) -> int:
        """Bytes of stored block inputs."""
        return int(sum(a.nbytes for a in self._store.values()))

    def delete(self) -> None:
        """Drop the stored arrays and remove the on-disk files (if any)."""
        self._store.clear()
        if self.directory is not None and self.directory.exists():
            shutil.rmtree(self.directory)


@torch.no_grad()
def build_residual_cache(
    tower: Tower,
    batches: Iterable[tuple[torch.Tensor, np.ndarray]],
    n: int,
    *,
    blocks: Sequence[int] | None = None,
    directory: str | Path | None = None,
    progress: bool = True,
) -> ResidualCache:
    """One unlesioned forward over ``batches`` (images (B, 3, S, S), ids (B,)) keeping the input of chosen blocks.

    ``n`` stimuli in all; ``blocks`` default all; arrays (n, T, C) per block in the
    compute dtype (bfloat16 as int16 bits), on disk as ``<directory>/block_XX.npy``
    when ``directory`` is given (460 MB per block for 3000 ViT-B/32 stimuli, float32).
    """
    from numpy.lib.format import open_memmap
    from tqdm.auto import tqdm

    check_int("n", n, 1)
    ks = tuple(range(tower.n_blocks)) if blocks is None else tuple(sorted({_check_block(tower, k, "blocks") for k in blocks}))
    store: dict[int, np.ndarray] = {}
    cur = {"start": 0}
    d = Path(directory) if directory is not None else None
    if d is not None:
        d.mkdir(parents=True, exist_ok=True)
    sdt = _np_storage_dtype(tower.dtype)

    def keep(k: int, x: torch.Tensor) -> None:
        if k not in store:
            shape = (int(n), *x.shape[1:])
            if d is not None and not store:  # first block: check room for all of them
                need = len(ks) * int(np.prod(shape)) * np.dtype(sdt).itemsize
                require_free_space(d, need, f"the residual cache of {len(ks)} blocks")
            store[k] = (
                open_memmap(d / f"block_{k:02d}.npy", mode="w+", dtype=sdt, shape=shape)
                if d is not None
                else np.empty(shape, dtype=sdt)
            )
        t = x.detach().to("cpu")
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        store[k][cur["start"] : cur["start"] + x.shape[0]] = t.numpy()

    ids, embs = [], []
    with hooks.read_inputs({k: tower.blocks[k] for k in ks}, keep):
        with tqdm(total=int(n), desc="cache block inputs", unit="img", disable=not progress) as bar:
            for images, idx in batches:
                b = images.shape[0]
                if cur["start"] + b > n:
                    raise ValueError(f"batches yield more than n={n} stimuli")
                embs.append(embed(tower.forward(images.to(device=tower.device, dtype=tower.dtype))).cpu().numpy())
                ids.append(np.asarray(idx))
                cur["start"] += b
                bar.update(b)
    if cur["start"] != n:
        raise ValueError(f"batches yielded {cur['start']} stimuli, expected n={n}")
    for a in store.values():
        if hasattr(a, "flush"):
            a.flush()
    return ResidualCache(np.concatenate(ids).astype(np.int64), np.concatenate(embs), ks, tower.dtype, d, store)


def lesion_indices(n_stimuli: int, n_lesion_stimuli: int | None = None) -> np.ndarray:
    """Stimulus ids to lesion: the first ``n_lesion_stimuli`` (all when ``None``).

    The stimuli are i.i.d. draws, so the first ``m`` are a random subset.
    ``"None"``/``"null"`` strings count as ``None`` (a parameter default that
    went through YAML as text).

    Returns:
    (m,) int64, ``m = min(n_lesion_stimuli, n_stimuli)``.
    """
    if n_lesion_stimuli is None or (isinstance(n_lesion_stimuli, str) and n_lesion_stimuli.strip() in ("None", "null", "")):
        return np.arange(int(n_stimuli), dtype=np.int64)
    check_int("n_lesion_stimuli", n_lesion_stimuli, 1)
    return np.arange(min(int(n_lesion_stimuli), int(n_stimuli)), dtype=np.int64)


def _chunks(n: int, batch_size: int) -> list[slice]:
    return [slice(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


@torch.no_grad()
def embed_from_cache(
    tower: Tower,
    cache: ResidualCache,
    start: int,
    *,
    batch_size: int = 64,
    mask: np.ndarray | None = None,
    block: int | None = None,
    tokens: str = "all",
) -> np.ndarray:
    """Embeddings of every cached stimulus, running only blocks ``start..N-1``.

    Parameters:
    start : int — First block to run; its input must be cached.
    batch_size : int — Stimuli per forward.
    mask : bool array (n, C) or (C,), optional — Channels of ``blocks[block].attn`` to ablate per stimulus (see
        :func:`ablate_channels`); requires ``block >= start``.
    block : int, optional — Block whose attention output ``mask`` applies to.
    tokens : {"all", "cls"}

    Returns:
    (n, E) float32 array of L2-normalised embeddings, in cache order.
    """
    batch_size = check_batch_size(batch_size)
    _check_block(tower, start, "start")
    if mask is not None:
        if block is None:
            raise ValueError("block must be given together with mask")
        _check_block(tower, block)
        if block < start:
            raise ValueError(f"block ({block}) must be >= start ({start}): a truncated forward skips earlier blocks")
        mask = np.asarray(mask, dtype=bool)
        if mask.ndim == 2 and mask.shape[0] != cache.n:
            raise ValueError(f"mask must have one row per cached stimulus ({cache.n}), got {mask.shape[0]}")
    out = np.empty((cache.n, cache.embeddings.shape[1]), dtype=np.float32)
    for sl in _chunks(cache.n, batch_size):
        x = cache.block_input(start, sl, tower.device)
        if mask is None:
            out[sl] = embed(forward_from_block(tower, x, start)).cpu().numpy()
        else:
            m = mask[sl] if mask.ndim == 2 else mask
            with ablate_channels(tower.blocks[block].attn, m, tokens):
                out[sl] = embed(forward_from_block(tower, x, start)).cpu().numpy()
    return out


@torch.no_grad()
def embed_images(tower: Tower, batches: Iterable[tuple[torch.Tensor, np.ndarray]], n: int) -> np.ndarray:
    """Full-forward embeddings (n, E) float32, L2-normalised, in batch order (e.g. for conv1 lesions)."""
    out = []
    for images, _ in batches:
        out.append(embed(tower.forward(images.to(device=tower.device, dtype=tower.dtype))).cpu().numpy())
    res = np.concatenate(out) if out else np.empty((0, 0), np.float32)
    if res.shape[0] != n:
        raise ValueError(f"batches yielded {res.shape[0]} stimuli, expected n={n}")
    return res


# =========================================================================== zero-shot task


@dataclass(frozen=True)
class ZeroShotTask:
    """A fixed zero-shot decision: "is the target prompt the most probable one?".

    Attributes:
    text_features : (P, E) float32 tensor, L2-normalised prompt embeddings
    scale : float — ``exp(logit_scale)``.
    labels : tuple of str — Prompt labels, in the order of ``text_features``.
    target : int — Index of the correct label (``"circle"``).
    """

    text_features: torch.Tensor
    scale: float
    labels: tuple[str, ...]
    target: int = 0

    def logits(self, image_features: np.ndarray | torch.Tensor) -> np.ndarray:
        """``scale * cos(image, prompt)``: (n, P) float64, prompts in :attr:`labels` order.

        Computed in float64 from the (float32) embeddings, which are L2-normalised.
        """
        img = np.asarray(torch.as_tensor(np.asarray(image_features)).float(), dtype=np.float64)
        txt = self.text_features.float().cpu().numpy().astype(np.float64)
        if img.ndim != 2 or img.shape[1] != txt.shape[1]:
            raise ValueError(f"image_features must have shape (n, {txt.shape[1]}), got {img.shape}")
        return self.scale * img @ txt.T

    def margin(self, image_features: np.ndarray | torch.Tensor) -> np.ndarray:
        """Logit margin: target logit minus the largest other logit, (n,) float64.

        Positive = correct decision. Unlike the target probability it does
        not saturate: a lesion that lowers the margin from 8 to 6 shows up
        even though P(target) stays near 1. With two prompts it equals
        ``log(p_target / (1 - p_target))``.
        """
        lg = self.logits(image_features)
        return lg[:, self.target] - np.delete(lg, self.target, axis=1).max(axis=1)

    def assigned(self, image_features: np.ndarray | torch.Tensor, label: str) -> np.ndarray:
        """(n,) bool: prompt ``label`` has a strictly larger logit than every other (ties fail)."""
        lg = self.logits(image_features)
        j = self.labels.index(label)
        return lg[:, j] > np.delete(lg, j, axis=1).max(axis=1)

    def decide(self, image_features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Per-stimulus decisions.

        Parameters:
        image_features : (n, E) L2-normalised embeddings.

        Returns:
        correct : (n,) bool — Target probability strictly larger than every other (ties fail).
        p_target : (n,) float64 — Softmax probability of the target prompt.
        """
        from helpers.models import zero_shot_probs

        img = torch.as_tensor(np.asarray(image_features), dtype=torch.float32)
        probs = zero_shot_probs(img, self.text_features.float().cpu(), self.scale).numpy().astype(np.float64)
        others = np.delete(probs, self.target, axis=1)
        correct = probs[:, self.target] > others.max(axis=1)
        return correct, probs[:, self.target]


@torch.no_grad()
def zero_shot_task(lm, prompts: Mapping[str, str] | None = None, target: str = "circle") -> ZeroShotTask:
    """Encode the prompts with the model **as it is now** (lesioned or not).

    Parameters:
    lm : helpers.models.LoadedModel
    prompts : mapping label -> text — Default :data:`helpers.models.CIRCLE_VS_EMPTY` (``{"circle": "a black circle",
        "empty": "an empty image"}``).
    target : str — Label counted as correct.
    """
    from helpers.models import CIRCLE_VS_EMPTY, encode_prompts, logit_scale

    prompts = dict(CIRCLE_VS_EMPTY if prompts is None else prompts)
    if len(prompts) < 2:
        raise ValueError(f"prompts must hold at least two labels, got {list(prompts)}")
    if target not in prompts:
        raise ValueError(f"target must be one of the prompt labels {list(prompts)}, got {target!r}")
    labels = tuple(prompts)
    return ZeroShotTask(encode_prompts(lm, list(prompts.values())).cpu(), logit_scale(lm), labels, labels.index(target))


# =========================================================================== 1. layer lesions


def layer_lesion_study(
    lm,
    cache: ResidualCache,
    batches: Callable[[], Iterable[tuple[torch.Tensor, np.ndarray]]],
    *,
    prompts: Mapping[str, str] | None = None,
    control_images: torch.Tensor | None = None,
    control_label: str = "empty",
    mode: str = "all",
    sublayers: bool = False,
    units: Sequence[str] | None = None,
    batch_size: int = 64,
    progress: bool = True,
):
    """Lesion every unit of both towers, one at a time; 2-way zero-shot performance.

    Visual blocks run from the cached input of their block; text units
    re-encode only the prompts; ``visual.conv1`` runs a full forward over
    ``batches()``, or one image when the lesion zeroes it (every image then
    gives the same tokens).

    Parameters:
    lm : helpers.models.LoadedModel
    cache : ResidualCache — Must hold the inputs of every visual block (build with ``blocks=None``).
    batches : callable returning an iterable of (images, ids) — The cached stimuli in cache order, for the
        full-forward conv1 lesion.
    prompts : mapping, optional — Default ``CIRCLE_VS_EMPTY``; the first label is the target.
    control_images : (m, 3, H, W) tensor, optional — Preprocessed images that should get ``control_label``, e.g. the
        blank canvas (:func:`helpers.stimuli.blank_input`). Adds ``control_performance`` (fraction assigned
        ``control_label``) and ``balanced_performance`` (mean of the two): a lesion that removes the image gives every
        image the same answer, which scores 0.5 here but can keep ``performance`` (the blog's, targets only) at 1.
    mode : {"weights", "all"}
    sublayers : bool — Also lesion attention and MLP sublayers separately.
    units : sequence of str, optional — Restrict the sweep to these unit names (from :func:`lesion_units`).
    batch_size, progress : int, bool

    Returns:
    pandas.DataFrame — One row per unit: ``tower, unit, label, block, part, mode, performance, p_target,
        baseline_performance, baseline_p_target, delta, n_stimuli`` (``delta`` = performance - baseline), plus
        ``control_performance``, ``balanced_performance`` and their baselines with ``control_images``.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    _check_mode(mode)
    tower = visual_tower(lm.model)
    missing = [k for k in range(tower.n_blocks) if k not in cache.blocks]
    if missing:
        raise ValueError(f"cache must hold the input of every visual block; missing {missing} (build with blocks=None)")
    base_task = zero_shot_task(lm, prompts)
    target = base_task.labels[base_task.target]
    if control_images is not None and (control_label not in base_task.labels or control_label == target):
        raise ValueError(f"control_label must be a non-target prompt label {base_task.labels}, got {control_label!r}")
    control = None if control_images is None else [(control_images, np.arange(len(control_images)))]
    base_ctrl = _embed_control(tower, control)  # the unlesioned blank, reused by text lesions
    base = _lesion_row(base_task, cache.embeddings, base_ctrl, control_label)
    rows = []
    for unit in tqdm(_selected_units(lm.model, sublayers, units), desc=f"layer lesions ({mode})", disable=not progress):
        with lesion(lm.model, unit.name, mode):
            if unit.tower == "text":  # the images are untouched: cached embeddings, new prompts
                row = _lesion_row(zero_shot_task(lm, prompts, target), cache.embeddings, base_ctrl, control_label)
            else:
                feats = (_embed_stem_lesion(tower, lm.model.get_submodule(unit.name), batches, cache.n)
                         if unit.block is None else _embed_block_lesion(tower, cache, unit, mode, batch_size))
                row = _lesion_row(base_task, feats, _embed_control(tower, control), control_label)
        rows.append(dict(tower=unit.tower, unit=unit.name, label=unit.label, block=unit.block, part=unit.part, mode=mode,
                         **row, **{f"baseline_{k}": v for k, v in base.items()},
                         delta=row["performance"] - base["performance"], n_stimuli=cache.n))
    df = pd.DataFrame(rows)
    df["block"] = df["block"].astype("Int64")
    return df


@torch.no_grad()
def _embed_stem_lesion(tower: Tower, conv1: torch.nn.Module, batches, n: int) -> np.ndarray:
    """Embeddings (n, E) under a lesion of the patch embedding ``conv1`` (already applied).

    With every parameter of ``conv1`` zero, every image gives the same tokens (class
    and positional embeddings only), so one image is embedded and its row repeated;
    otherwise a full forward over ``batches()``.
    """
    if any(bool(p.count_nonzero()) for p in conv1.parameters()):
        return embed_images(tower, batches(), n)
    images, _ = next(iter(batches()))
    return np.repeat(embed_images(tower, [(images[:1], np.zeros(1))], 1), n, axis=0)


@torch.no_grad()
def _embed_block_lesion(tower: Tower, cache: ResidualCache, unit: LesionUnit, mode: str, batch_size: int) -> np.ndarray:
    """Embeddings under the lesion of visual block-level ``unit`` (already applied), from the cache.

    A whole open_clip block lesioned in mode ``"all"`` is an exact identity (module
    docstring), so it is not run: the forward starts at the next block from the
    lesioned block's own cached input (the head alone after the last block).
    """
    k = unit.block
    if not (mode == "all" and unit.part == "block" and _is_residual_attention_block(tower.blocks[k])):
        return embed_from_cache(tower, cache, k, batch_size=batch_size)
    out = np.empty((cache.n, cache.embeddings.shape[1]), dtype=np.float32)
    for sl in _chunks(cache.n, check_batch_size(batch_size)):
        x = cache.block_input(k, sl, tower.device)
        out[sl] = embed(forward_from_block(tower, x, k + 1) if k + 1 < tower.n_blocks else tower.head(x)).cpu().numpy()
    return out


def _selected_units(model, sublayers: bool, units: Sequence[str] | None) -> list:
    """:func:`lesion_units`, restricted to ``units`` (names checked) when given."""
    todo = lesion_units(model, sublayers or units is not None)
    if units is None:
        return todo
    bad = [u for u in units if u not in {t.name for t in todo}]
    if bad:
        raise ValueError(f"units must be names from lesion_units(model, sublayers=True); unknown: {bad}")
    return [u for u in todo if u.name in set(units)]


def _embed_control(tower: Tower, control) -> np.ndarray | None:
    return None if control is None else embed_images(tower, control, len(control[0][0]))


def _lesion_row(task: "ZeroShotTask", feats: np.ndarray, ctrl: np.ndarray | None, control_label: str) -> dict:
    """Performance and P(target) on the stimuli, and (with control images) the control's and the balanced performance."""
    correct, p = task.decide(feats)
    row = dict(performance=correct.mean(), p_target=p.mean())
    if ctrl is not None:
        c = task.assigned(ctrl, control_label).mean()
        row.update(control_performance=c, balanced_performance=(row["performance"] + c) / 2)
    return row


# =========================================================================== ratemaps -> neurons


@torch.no_grad()
def attention_cls(tower: Tower, cache: ResidualCache, block: int, *, batch_size: int = 64) -> np.ndarray:
    """Class-token attention output of ``block`` for every cached stimulus.

    The quantity stage 02 records (CLS of ``visual.transformer.resblocks.<block>.attn``),
    recomputed from the cached block input by running that one block. The
    fallback when no matching recording is on disk (:func:`recorded_attention_cls`).

    Returns:
    (n, C) float32 array.
    """
    batch_size = check_batch_size(batch_size)
    _check_block(tower, block)
    out: list[np.ndarray] = []

    with hooks.Trace(tower.blocks[block], "attn") as tr:
        for sl in _chunks(cache.n, batch_size):
            tower.blocks[block](cache.block_input(block, sl, tower.device))
            out.append(tr.outputs["attn"][:, 0].float().cpu().numpy())
    return np.concatenate(out)


def recorded_attention_cls(recording, lm, stimuli_hash: str, block: int, indices: np.ndarray):
    """Stage 02's recording of what :func:`attention_cls` computes, when it is the same quantity.

    Parameters:
    recording : helpers.record.Recording or None — From :func:`helpers.record.load_recording` (complete recordings
        only).
    lm : helpers.models.LoadedModel — The model being lesioned; its weights hash (which covers the dtype) must equal
        the recording's.
    stimuli_hash : str — Hash of the stimulus set; a recording of other stimuli is an error.
    block : int — Block whose ``attn`` class token is wanted.
    indices : (n,) int — Stimulus ids (rows of the recording), e.g. :func:`lesion_indices`.

    Returns:
    acts : (n, C) float32 array, or None when the recording is absent, lacks the layer, holds other tokens than the
        class token, or was made with other weights or another dtype (then recompute with :func:`attention_cls`).
    reason : str — Where ``acts`` came from, or why there are none.

    Raises:
    ValueError — The recording was made from other stimuli.
    """
    from helpers.models import weights_hash

    name = block_module(block, "attn")
    if recording is None:
        return None, "no complete recording"
    man = recording.manifest
    if man.get("stimuli_hash") != stimuli_hash:
        raise ValueError("recording: it was made from another stimulus set (stimuli_hash differs); rerun stage 02")
    if name not in recording.arrays:
        return None, f"the recording lacks {name}"
    if man.get("tokens") != "cls":
        return None, f"the recording holds tokens={man.get('tokens')!r}, not the class token"
    if man.get("weights_hash") != weights_hash(lm.model):
        return None, "the recording was made with other weights or another dtype (weights hash differs)"
    return np.asarray(recording.arrays[name][np.asarray(indices)], dtype=np.float32), f"stage 02's recording of {name}"


@dataclass(frozen=True)
class FieldMaps:
    """Validated ratemaps of ``C`` neurons on a ``bins x bins`` grid.

    Attributes:
    maps : (C, bins, bins) float64, NaN in unvisited bins. — Row = y bin (top of the image first), column = x bin.
    occupancy : (bins, bins) float64, stimuli per bin (float: smoothed occupancies are kept as given).
    """

    maps: np.ndarray
    occupancy: np.ndarray

    @property
    def bins(self) -> int:
        return int(self.maps.shape[1])

    @property
    def n_neurons(self) -> int:
        return int(self.maps.shape[0])

    @property
    def visited(self) -> np.ndarray:
        """(bins, bins) bool: bins with a finite value for every neuron."""
        return np.isfinite(self.maps).all(axis=0) & (self.occupancy > 0)

    @property
    def mean(self) -> np.ndarray:
        """(C,) each neuron's mean over its visited bins (unweighted by occupancy)."""
        return self.maps[:, self.visited].mean(axis=1)

    @property
    def sd(self) -> np.ndarray:
        """(C,) each neuron's spatial SD: population SD (ddof 0) of its map over the visited bins."""
        return self.maps[:, self.visited].std(axis=1)


def field_maps(maps: np.ndarray, occupancy: np.ndarray) -> FieldMaps:
    """Check and wrap ratemaps, e.g. 03's (``paths.Run.ratemaps(condition)``).

    Parameters:
    maps : array (C, bins, bins) — One layer's ratemaps (as returned by ``helpers.ratemaps.ratemaps``), NaN in
        unvisited bins. Row = y bin, column = x bin.
    occupancy : array (bins, bins) — Stimuli per bin.

    Returns:
    FieldMaps

    Raises:
    ValueError — Wrong shapes, non-square maps, or no visited bin.
    """
    m = np.asarray(maps, dtype=np.float64)
    occ = np.asarray(occupancy)
    if m.ndim != 3 or m.shape[1] != m.shape[2]:
        raise ValueError(f"maps must have shape (n_neurons, bins, bins), got {m.shape}")
    if occ.shape != m.shape[1:]:
        raise ValueError(f"occupancy must have shape {m.shape[1:]} (bins, bins) to match maps, got {occ.shape}")
    fm = FieldMaps(m, occ.astype(np.float64))
    if not fm.visited.any():
        raise ValueError("maps have no visited bin (all NaN or zero occupancy)")
    return fm


class BlockMaps(NamedTuple):
    """What the lesion stages know about ``block``'s attention output (class token) in one condition."""

    activations: np.ndarray  # (n_lesioned, C) float32, rows in ``lesion_indices`` order
    field_maps: FieldMaps
    source: str  # where both came from, in words


def block_maps(run_dir, condition: str, lm, tower: Tower, cache: ResidualCache, stim, block: int,
               indices: np.ndarray, *, extent, bins: int, sigma: float | None, batch_size: int = 64) -> BlockMaps:
    """Activations and field maps of ``visual.transformer.resblocks.<block>.attn`` for ``condition``.

    Activations: stage 02's recording when it holds that quantity
    (:func:`recorded_attention_cls`), else recomputed from the cache
    (:func:`attention_cls`). Field maps: stage 03's ratemaps of the layer
    (``Run.ratemaps(condition)``, the maps 03 scored), else mapped
    from the recording of every stimulus, else from the lesioned stimuli's
    activations, with :func:`helpers.ratemaps.ratemaps`.
    """
    from helpers import paths, ratemaps, record
    from helpers.stimuli import positions_in_input

    name = block_module(block, "attn")
    run = paths.Run(run_dir, create=False)
    rec = record.load_recording(run.recordings(condition)) if run.recorded(condition) else None  # refuses incomplete
    acts, why = recorded_attention_cls(rec, lm, stim.hash, block, indices)
    recorded = acts is not None
    if not recorded:
        acts = attention_cls(tower, cache, block, batch_size=batch_size)
        why += "; recomputed from the residual cache"
    npz = run.ratemaps(condition)
    rm = ratemaps.load_ratemaps(npz) if npz.exists() else None
    if rm is not None and name in rm["maps"]:  # stage 03 (helpers.ratemaps.save_ratemaps format)
        if not np.allclose(rm["extent"], extent):
            raise ValueError(f"{npz.name} was mapped over {rm['extent']}, not extent={extent}; rerun stage 03")
        maps, occupancy, source = rm["maps"][name], rm["occupancy"], npz.name
    elif recorded:  # stage 02's recording, every stimulus
        positions = positions_in_input(stim, lm.preprocess)
        maps, occupancy = ratemaps.ratemaps(positions, rec.arrays[name], bins=bins, extent=extent, sigma=sigma)
        source = f"recording {name}"
    else:  # the lesioned stimuli's activations
        positions = positions_in_input(stim, lm.preprocess)[np.asarray(indices)]
        maps, occupancy = ratemaps.ratemaps(positions, acts, bins=bins, extent=extent, sigma=sigma)
        source = "the residual cache"
    return BlockMaps(acts, field_maps(maps, occupancy), f"activations {acts.shape} from {why}; ratemaps from {source}")


@dataclass(frozen=True)
class HeldOutValues:
    """What each stimulus's neurons are chosen by, read from maps that do not contain that stimulus.

    Row ``i`` comes from the leave-one-out ratemaps of stimulus ``i``
    (:func:`held_out_values`): every map built from all stimuli but ``i``.

    Attributes:
    value : (n, C) float64 — Each neuron's held-out map value at stimulus ``i``'s bin.
    mean : (n, C) float64 — Mean of that neuron's held-out map over its visited bins (unweighted, as
        :attr:`FieldMaps.mean`).
    sd : (n, C) float64 — Spatial SD of that map over the same bins (ddof 0, as :attr:`FieldMaps.sd`).
    """

    value: np.ndarray
    mean: np.ndarray
    sd: np.ndarray

    @property
    def n_stimuli(self) -> int:
        return int(self.value.shape[0])

    @property
    def n_neurons(self) -> int:
        return int(self.value.shape[1])

    @property
    def z(self) -> np.ndarray:
        """(n, C) spatial deviation ``(value - mean) / sd``; 0 for a neuron with a flat map (sd = 0)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.sd > 0, (self.value - self.mean) / self.sd, 0.0)


def _smoothing_matrix(bins: int, sigma: float) -> np.ndarray:
    """(B, B) matrix K, B = bins²: ``K[b]`` is the smoothing of a unit impulse at flat bin ``b``.

    The same filter as :func:`helpers.ratemaps.smooth_maps` (``gaussian_filter``,
    zero padding, truncated at 4 sigma); identity for ``sigma = 0``. Smoothing
    is linear, so ``G * sums = K.T @ sums`` over flat bins.
    """
    from scipy.ndimage import gaussian_filter

    eye = np.eye(bins * bins).reshape(-1, bins, bins)
    if sigma > 0:
        eye = gaussian_filter(eye, sigma=(0.0, sigma, sigma), mode="constant", cval=0.0)
    return eye.reshape(bins * bins, bins * bins)


def held_out_values(
    activations: np.ndarray, rows_cols: np.ndarray, bins: int, sigma: float | None = None
) -> HeldOutValues:
    """Exact leave-one-out ratemap statistics for every stimulus, vectorised over stimuli and neurons.

    ``activations`` (n, C); ``rows_cols`` (n, 2) bins; ``sigma`` in bins as for the
    ratemaps. The maps are ``smooth(sums) / smooth(occupancy)``; smoothing is
    linear, so leaving stimulus ``i`` (bin ``b``) out gives at bin ``x``
    ``(G*S(x) - a_i K_b(x)) / (G*O(x) - K_b(x))`` with ``K_b`` the smoothed
    impulse at ``b``, and each held-out map's mean and SD over visited bins are a
    few (B, B) @ (B, C) products: no map is built per stimulus. Raises ValueError
    when a stimulus has no held-out value at its own bin.
    """
    from helpers.ratemaps import _check_bins, _check_sigma

    bins, sigma = _check_bins(bins), _check_sigma(sigma)
    a = np.asarray(activations, dtype=np.float64)
    rc = np.asarray(rows_cols)
    if a.ndim != 2 or a.shape[0] < 2:
        raise ValueError(f"activations must have shape (n, C) with n >= 2 stimuli, got {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("activations must be finite")
    if rc.shape != (a.shape[0], 2) or not np.issubdtype(rc.dtype, np.integer):
        raise ValueError(f"rows_cols must be an ({a.shape[0]}, 2) integer array of bins, got {rc.dtype} {rc.shape}")
    if ((rc < 0) | (rc >= bins)).any():
        raise ValueError(f"rows_cols: {int(((rc < 0) | (rc >= bins)).any(axis=1).sum())} stimuli lie outside the maps")
    B = bins * bins
    f = rc[:, 0] * bins + rc[:, 1]
    mu = a.mean(axis=0)
    a = a - mu
    sums = np.zeros((B, a.shape[1]))
    np.add.at(sums, f, a)
    occ = np.bincount(f, minlength=B).astype(np.float64)
    K = _smoothing_matrix(bins, sigma)  # K[b, x]
    gs, go = K.T @ sums, K.T @ occ  # smoothed sums and occupancy at x
    den = go[None, :] - K  # den[b, x]: smoothed occupancy without one stimulus at b
    vis = (occ[None, :] - np.eye(B)) > 0  # vis[b, x]: x still visited
    w = np.where(vis, 1.0 / np.where(vis, den, 1.0), 0.0)
    n_vis = vis.sum(axis=1)[f][:, None]
    w2 = w * w
    s1 = (w @ gs)[f] - a * (w * K).sum(axis=1)[f][:, None]
    s2 = (w2 @ (gs * gs))[f] - 2 * a * ((w2 * K) @ gs)[f] + a * a * (w2 * K * K).sum(axis=1)[f][:, None]
    mean = s1 / n_vis
    sd = np.sqrt(np.maximum(s2 / n_vis - mean * mean, 0.0))
    own = den[f, f]
    if not (own > 0).all():
        raise ValueError(
            f"{int((own <= 0).sum())} stimuli have no held-out ratemap value at their bin (alone in it, and "
            f"sigma={sigma} reaches no other stimulus); use sigma > 0, fewer bins or more stimuli"
        )
    value = (gs[f] - a * K[f, f][:, None]) / own[:, None]
    return HeldOutValues(value + mu, mean + mu, sd)


def _ranks_from_scores(scores: np.ndarray) -> np.ndarray:
    """rank[i, c] = position of channel c when row i is sorted by decreasing score (ties: lower c first)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(scores.shape[1])[None, :].repeat(scores.shape[0], 0), axis=1)
    return ranks


def neuron_ranks(values: HeldOutValues, rule: str, seed: int | None = None) -> np.ndarray:
    """Per-stimulus lesion priority of every neuron.

    ``ranks[i, c] < k`` selects the ``k`` neurons lesioned for stimulus ``i``;
    the sets are nested across proportions.

    Parameters:
    values : HeldOutValues — Held-out map statistics at each stimulus's bin (:func:`held_out_values`).
    rule : {"Targeted", "Targeted_Abs", "Targeted_raw", "Random"} (:data:`RULES`) — ``Targeted``: largest spatial
        deviation ``z = (value - mean) / sd`` first (the neuron fires more here than elsewhere, in units of its own
        spatial SD). ``Targeted_Abs``: largest ``|z|`` (high or low). ``Targeted_raw``: the blog's literal rule,
        highest map value first (dominated by the neurons' mean levels). ``Random``: an independent uniformly random
        order for every stimulus, from ``numpy.random.default_rng(seed)``.
    seed : int — Required for ``Random``.

    Returns:
    (n, C) int64
    """
    if rule == "Random":
        check_int("seed", seed)
        rng = np.random.default_rng(int(seed))
        return rng.permuted(np.tile(np.arange(values.n_neurons, dtype=np.int64), (values.n_stimuli, 1)), axis=1)
    if rule == "Targeted":
        return _ranks_from_scores(values.z)
    if rule == "Targeted_Abs":
        return _ranks_from_scores(np.abs(values.z))
    if rule == "Targeted_raw":
        return _ranks_from_scores(values.value)
    raise ValueError(f"rule must be one of {RULES}, got {rule!r}")


def n_ablated(proportion: float, n_neurons: int) -> int:
    """Number of neurons lesioned at ``proportion``: ``round(proportion * n_neurons)`` (half to even)."""
    return int(np.round(float(proportion) * n_neurons))


def _check_proportions(proportions: Sequence[float]) -> np.ndarray:
    p = np.asarray(list(proportions), dtype=float)
    if p.ndim != 1 or p.size == 0 or not np.all(np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError(f"proportions must be a non-empty list of numbers in [0, 1], got {list(proportions)!r}")
    return p


def stimulus_pairs(n: int, n_pairs: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(i, j)``, ``i != j``, of stimuli: all of them when there are at most ``n_pairs``, else a seeded sample.

    Returns:
    i, j : (m,) int64
    """
    check_int("n_pairs", n_pairs, 1)
    if n < 2:
        raise ValueError(f"n must be >= 2 stimuli to form pairs, got {n}")
    if n * (n - 1) // 2 <= n_pairs:
        i, j = np.triu_indices(n, 1)
        return i.astype(np.int64), j.astype(np.int64)
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, n_pairs)
    return i, (i + rng.integers(1, n, n_pairs)) % n


def selection_specificity(ranks: np.ndarray, k: int, pairs: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
    """How stimulus-specific the ``k`` neurons lesioned per stimulus are.

    Parameters:
    ranks : (n, C) int, from :func:`neuron_ranks`; stimulus ``i`` loses ``ranks[i] < k``.
    k : int, neurons lesioned per stimulus.
    pairs : (i, j) from :func:`stimulus_pairs`.

    Returns:
    dict with ``jaccard``: mean over the pairs of ``|S_i & S_j| / |S_i | S_j|``
    (1 = every stimulus loses the same neurons; a random choice gives about
    ``k / (2C - k)``; NaN for ``k = 0``), and ``n_common``: neurons lesioned
    for every stimulus.
    """
    m = np.asarray(ranks) < k
    if k <= 0:
        return dict(jaccard=float("nan"), n_common=0)
    i, j = pairs
    inter = np.count_nonzero(m[i] & m[j], axis=1)
    return dict(jaccard=float(np.mean(inter / (2 * k - inter))), n_common=int(m.all(axis=0).sum()))


# =========================================================================== 2. targeted lesions


@torch.no_grad()
def _targeted_embeddings(tower, cache, block, jobs, ranks, C, tokens, batch_size, progress,
                         reuse_attention: bool = True) -> dict:
    """Lesioned embeddings (n, E) per job ``(run, k)``: each stimulus's top-``k`` ranked channels zeroed."""
    from tqdm.auto import tqdm

    if not jobs:
        return {}
    feats = {job: np.empty((cache.n, cache.embeddings.shape[1]), dtype=np.float32) for job in jobs}
    chunks = _chunks(cache.n, batch_size)
    with tqdm(total=len(chunks) * len(jobs), desc=f"targeted lesions @ block {block}", disable=not progress) as bar:
        for sl in chunks:
            lesioned = _lesioned_embeddings(tower, cache.block_input(block, sl, tower.device), block, tokens,
                                            reuse_attention)
            for r, k in jobs:
                feats[(r, k)][sl] = lesioned(np.ones((sl.stop - sl.start, C), bool) if r == "all" else ranks[r][sl] < k)
                bar.update(1)
    return feats


def targeted_lesion_study(
    tower: Tower,
    cache: ResidualCache,
    task: ZeroShotTask,
    values: HeldOutValues,
    *,
    block: int = 9,
    proportions: Sequence[float] = DEFAULT_PROPORTIONS,
    n_random_seeds: int = 5,
    include: Sequence[str] = RULES,
    tokens: str = "all",
    batch_size: int = 64,
    n_pairs: int = 2000,
    progress: bool = True,
    reuse_attention: bool = True,
):
    """Per-stimulus neuron lesions at ``block`` for a sweep of proportions.

    For stimulus ``i`` and proportion ``p`` the ``round(p * C)`` neurons of highest
    priority (:func:`neuron_ranks`, from maps that leave ``i`` out) are zeroed in the
    attention output of ``block`` for that stimulus only (per-sample mask, from
    the cached block input). Proportion 0 is the cached baseline; 1 is computed once.
    ``values``: :func:`held_out_values` of the C channels, one row per cached
    stimulus; ``include``: rules from :data:`RULES` (Random repeated with seeds
    ``0..n_random_seeds-1``); ``n_pairs`` stimulus pairs (seed 0) for the Jaccard index.
    ``reuse_attention``: compute the block's attention output once per batch and start every lesion from it
    (:func:`forward_from_attention`, equal to 1e-5 in fp32); False runs each lesion through :func:`ablate_channels`.

    Returns a DataFrame: ``condition, seed, proportion, n_ablated, performance,
    p_target, n_stimuli, jaccard, n_common`` (``seed`` empty for targeted rules).
    """
    import pandas as pd

    block = _check_block(tower, block)
    props = _check_proportions(proportions)
    check_int("n_random_seeds", n_random_seeds, 0)
    bad = [c for c in include if c not in RULES]
    if bad or not include:
        raise ValueError(f"include must be a non-empty subset of {RULES}, got {list(include)!r}")
    _check_tokens(tokens)
    batch_size = check_batch_size(batch_size)
    if not isinstance(values, HeldOutValues) or values.n_stimuli != cache.n:
        raise ValueError(f"values must be HeldOutValues with one row per cached stimulus ({cache.n})")
    if block not in cache.blocks:
        raise ValueError(f"cache lacks the input of block {block}; build it with blocks including {block}")
    pairs = stimulus_pairs(cache.n, n_pairs)

    runs: list[tuple[str, int | None]] = []
    for c in include:
        runs += [(c, s) for s in range(n_random_seeds)] if c == "Random" else [(c, None)]
    ranks = {r: neuron_ranks(values, r[0], r[1]) for r in runs}
    C = values.n_neurons
    ks = sorted({n_ablated(p, C) for p in props})
    interior = [k for k in ks if 0 < k < C]

    # decisions[(run, k)] -> (correct, p); k == 0 is the baseline, k == C is shared
    base = task.decide(cache.embeddings)
    jobs = [(r, k) for r in runs for k in interior] + ([("all", C)] if C in ks else [])
    feats = _targeted_embeddings(tower, cache, block, jobs, ranks, C, tokens, batch_size, progress, reuse_attention)
    decided = {job: task.decide(f) for job, f in feats.items()}
    rows = []
    for r in runs:
        for p in props:
            k = n_ablated(p, C)
            correct, pt = base if k == 0 else decided[("all", C)] if k == C else decided[(r, k)]
            rows.append(
                dict(condition=r[0], seed=r[1], proportion=float(p), n_ablated=k,
                     performance=correct.mean(), p_target=pt.mean(), n_stimuli=cache.n,
                     **selection_specificity(ranks[r], k, pairs))
            )
    df = pd.DataFrame(rows)
    df["seed"] = df["seed"].astype("Int64")
    return df


def summarise_targeted(df, value: str = "performance"):
    """Mean and SD (over Random seeds; ``ddof=1``, 0 for a single run) per rule (column ``condition``) and proportion.

    ``value`` is any numeric column of :func:`targeted_lesion_study`'s table,
    e.g. ``"performance"``, ``"p_target"`` or ``"jaccard"``.

    Returns:
    pandas.DataFrame with columns ``condition, proportion, mean, sd, n_runs``.
    """
    g = df.groupby(["condition", "proportion"], sort=False)[value]
    out = g.agg(mean="mean", sd="std", n_runs="count").reset_index()
    out["sd"] = out["sd"].fillna(0.0)
    return out


# =========================================================================== 3. spatial specificity


def region_mask(region: str | np.ndarray, bins: int) -> np.ndarray:
    """Boolean (bins, bins) map of a region of the visual field.

    Parameters:
    region : str or bool array (bins, bins) — One of :data:`REGIONS` (image convention: row 0 is the top, so
        ``"lower-left"`` = bins whose centre lies below and left of the image centre; with odd ``bins`` the middle
        row/column belongs to neither half), or an explicit mask.
    bins : int

    Returns:
    (bins, bins) bool
    """
    check_int("bins", bins, 2)
    if not isinstance(region, str):
        m = np.asarray(region, dtype=bool)
        if m.shape != (bins, bins):
            raise ValueError(f"region mask must have shape ({bins}, {bins}), got {m.shape}")
        return m
    if region not in REGIONS:
        raise ValueError(f"region must be one of {REGIONS} or a (bins, bins) bool mask, got {region!r}")
    centre = np.arange(bins) + 0.5 - bins / 2.0  # bin centres relative to the middle
    lower, upper = centre > 0, centre < 0  # rows (y down)
    left, right = centre < 0, centre > 0  # columns
    everywhere = np.ones(bins, bool)
    parts = region.split("-")  # "lower-left" -> rows "lower", columns "left"; "left" -> all rows
    r = {"lower": lower, "upper": upper}.get(parts[0], everywhere)
    c = {"left": left, "right": right}.get(parts[-1], everywhere)
    return r[:, None] & c[None, :]


def opposite_region(region: str | np.ndarray, bins: int) -> np.ndarray:
    """Boolean (bins, bins) map of the region opposite ``region``.

    A named region maps to :data:`OPPOSITE_REGIONS` (quadrants reflect through
    the image centre, ``"lower-left"`` <-> ``"upper-right"``; halves mirror,
    ``"left"`` <-> ``"right"``); an explicit mask maps to its complement.
    """
    if isinstance(region, str):
        region_mask(region, bins)  # validates the name and bins
        return region_mask(OPPOSITE_REGIONS[region], bins)
    return ~region_mask(region, bins)


def region_label(region: str | np.ndarray) -> tuple[str, str]:
    """(label of ``region``, label of its opposite) for tables and figures: the names, or "mask"/"complement"."""
    return (region, OPPOSITE_REGIONS[region]) if isinstance(region, str) else ("mask", "complement")


REGION_RULES = ("contrast", "peak", "com")


def region_contrast(fm: FieldMaps, mask: np.ndarray) -> np.ndarray:
    """(C,) each neuron's ``(map mean inside - map mean outside) / map SD``, over visited bins.

    A d'-like, scale-free contrast (0 for a constant map). ``mask``: (bins, bins) bool.
    """
    m = np.asarray(mask, dtype=bool)
    if m.shape != (fm.bins, fm.bins):
        raise ValueError(f"mask must have shape ({fm.bins}, {fm.bins}), got {m.shape}")
    vis = fm.visited
    inside, outside = m & vis, ~m & vis
    if not inside.any() or not outside.any():
        raise ValueError("the region must contain visited bins and leave visited bins outside it")
    sd = fm.maps[:, vis].std(axis=1)
    return (fm.maps[:, inside].mean(axis=1) - fm.maps[:, outside].mean(axis=1)) / np.where(sd > 0, sd, np.inf)


def region_neurons(
    fm: FieldMaps, mask: np.ndarray, *, rule: str = "contrast", proportion: float = 0.2
) -> np.ndarray:
    """Neurons whose fields lie in a region of the visual field.

    Parameters:
    fm : FieldMaps
    mask : (bins, bins) bool, the region (:func:`region_mask`).
    rule : {"contrast", "peak", "com"} — ``"contrast"`` (default): the top ``round(proportion * C)`` neurons by
        :func:`region_contrast` (the blog's "cells that have a high activity in the lower left part of the image").
        ``"peak"``: every neuron whose map maximum lies in the region. ``"com"``: every neuron whose centre of mass of
        ``map - min(map)`` falls in a region bin.
    proportion : float in (0, 1] — Used by ``"contrast"`` only.

    Returns:
    (m,) int64 neuron indices, best first for ``"contrast"``, ascending otherwise.
    """
    m = np.asarray(mask, dtype=bool)
    score = region_contrast(fm, m)  # validates the mask
    vis = fm.visited
    if rule == "contrast":
        if not (0 < float(proportion) <= 1):
            raise ValueError(f"proportion must be in (0, 1], got {proportion!r}")
        k = max(1, n_ablated(proportion, fm.n_neurons))
        return np.argsort(-score, kind="stable")[:k].astype(np.int64)
    if rule == "peak":
        flat = np.where(vis, fm.maps, -np.inf).reshape(fm.n_neurons, -1).argmax(axis=1)
        return np.flatnonzero(m.ravel()[flat]).astype(np.int64)
    if rule == "com":
        w = np.where(vis, fm.maps, np.nan)
        w = w - np.nanmin(w.reshape(fm.n_neurons, -1), axis=1)[:, None, None]
        w = np.nan_to_num(w, nan=0.0)
        tot = w.sum(axis=(1, 2))
        rr, cc = np.meshgrid(np.arange(fm.bins), np.arange(fm.bins), indexing="ij")
        with np.errstate(invalid="ignore", divide="ignore"):
            r = (w * rr).sum(axis=(1, 2)) / tot
            c = (w * cc).sum(axis=(1, 2)) / tot
        ok = tot > 0
        ri = np.clip(np.floor(np.nan_to_num(r) + 0.5).astype(int), 0, fm.bins - 1)
        ci = np.clip(np.floor(np.nan_to_num(c) + 0.5).astype(int), 0, fm.bins - 1)
        return np.flatnonzero(ok & m[ri, ci]).astype(np.int64)
    raise ValueError(f"rule must be one of {REGION_RULES}, got {rule!r}")


@dataclass(frozen=True)
class NeuronSet:
    """Neurons lesioned together, the same for every stimulus.

    Attributes:
    kind : {"region", "opposite", "random"} — :data:`LESION_KINDS`: the region's neurons, the opposite region's, or
        random ones.
    seed : int or None — ``random``: the seed of ``numpy.random.default_rng`` that drew them; else None.
    neurons : (k,) int64 channel indices.
    """

    kind: str
    seed: int | None
    neurons: np.ndarray


def matched_lesions(
    fm: FieldMaps,
    region: str | np.ndarray,
    *,
    rule: str = "contrast",
    proportion: float = 0.2,
    n_control_seeds: int = 5,
) -> list[NeuronSet]:
    """A region lesion and its matched controls, all with the same number of neurons ``k``.

    - ``region``: :func:`region_neurons` of ``region``;
    - ``opposite``: :func:`region_neurons` of :func:`opposite_region`;
    - ``random``: ``k`` neurons drawn without replacement from all ``C`` by
      ``numpy.random.default_rng(s)``, for ``s = 0..n_control_seeds-1``.

    ``k`` is the smaller of the two regional selections; the larger one is
    trimmed to its ``k`` neurons of highest :func:`region_contrast` for its own
    region. With ``rule="contrast"`` both already hold ``round(proportion * C)``
    neurons and nothing is trimmed. The region and opposite sets may overlap
    (a neuron with fields in both).

    Returns:
    list of NeuronSet: region, opposite, then the random seeds in order.
    """
    n_control_seeds = check_int("n_control_seeds", n_control_seeds, 0)
    masks = {"region": region_mask(region, fm.bins), "opposite": opposite_region(region, fm.bins)}
    chosen = {kind: region_neurons(fm, m, rule=rule, proportion=proportion) for kind, m in masks.items()}
    k = min(len(v) for v in chosen.values())
    if k == 0:
        empty = [kind for kind, v in chosen.items() if len(v) == 0]
        raise ValueError(
            f"rule={rule!r} selects no neuron for the {' and '.join(empty)} region(s); try rule='contrast'"
        )
    sets = []
    for kind, sel in chosen.items():
        score = region_contrast(fm, masks[kind])[sel]
        sets.append(NeuronSet(kind, None, sel[np.argsort(-score, kind="stable")[:k]].astype(np.int64)))
    for s in range(n_control_seeds):
        draw = np.random.default_rng(s).choice(fm.n_neurons, size=k, replace=False)
        sets.append(NeuronSet("random", s, np.sort(draw).astype(np.int64)))
    return sets


def _neuron_sets(neurons, n_channels: int) -> list[NeuronSet]:
    if isinstance(neurons, (list, tuple)) and neurons and all(isinstance(s, NeuronSet) for s in neurons):
        sets = list(neurons)
    else:
        sets = [NeuronSet("region", None, np.asarray(neurons))]
    for s in sets:
        idx = np.asarray(s.neurons)
        if s.kind not in LESION_KINDS:
            raise ValueError(f"NeuronSet.kind must be one of {LESION_KINDS}, got {s.kind!r}")
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer) or np.any((idx < 0) | (idx >= n_channels)):
            raise ValueError(f"neurons must be 1-D arrays of channel indices in 0..{n_channels - 1} ({s.kind} set)")
    if sum(s.kind == "region" for s in sets) != 1:
        raise ValueError("neurons must hold exactly one NeuronSet of kind 'region'")
    return sets


@torch.no_grad()
def spatial_lesion_study(
    tower: Tower,
    cache: ResidualCache,
    task: ZeroShotTask,
    neurons: np.ndarray | Sequence[NeuronSet],
    positions: np.ndarray,
    rows_cols: np.ndarray,
    region: np.ndarray,
    *,
    opposite: np.ndarray | None = None,
    block: int = 9,
    n_neurons: int | None = None,
    tokens: str = "all",
    batch_size: int = 64,
    progress: bool = False,
    reuse_attention: bool = True,
):
    """Lesion the same neurons for every stimulus; per-stimulus results before and after, per lesion.

    From the cached input of ``block``. ``neurons``: (m,) channel indices or
    the :class:`NeuronSet` list of :func:`matched_lesions` (one of kind ``"region"``);
    ``positions`` (n, 2) px and ``rows_cols`` (n, 2) bins in cache order; ``region``
    and ``opposite`` (default: complement) (bins, bins) bool masks; ``reuse_attention`` as in
    :func:`targeted_lesion_study`.

    Returns a DataFrame, one row per lesion and stimulus: ``lesion, seed,
    n_lesioned, stimulus, x, y, row, col, inside, in_opposite, correct_before,
    correct_after, p_before, p_after, margin_before, margin_after``.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    block = _check_block(tower, block)
    _check_tokens(tokens)
    batch_size = check_batch_size(batch_size)
    C = int(n_neurons if n_neurons is not None else tower.blocks[block].attn.out_proj.out_features)
    sets = _neuron_sets(neurons, C)
    rc = np.asarray(rows_cols)
    pos = np.asarray(positions, dtype=float)
    if rc.shape != (cache.n, 2) or pos.shape != (cache.n, 2):
        raise ValueError(f"positions and rows_cols must have shape ({cache.n}, 2), got {pos.shape}, {rc.shape}")
    if block not in cache.blocks:
        raise ValueError(f"cache lacks the input of block {block}; build it with blocks including {block}")
    reg = np.asarray(region, dtype=bool)
    opp = ~reg if opposite is None else np.asarray(opposite, dtype=bool)
    if opp.shape != reg.shape:
        raise ValueError(f"opposite must have the shape of region {reg.shape}, got {opp.shape}")
    valid = (rc >= 0).all(axis=1) & (rc < reg.shape[0]).all(axis=1)
    inside, in_opp = np.zeros(cache.n, bool), np.zeros(cache.n, bool)
    inside[valid] = reg[rc[valid, 0], rc[valid, 1]]
    in_opp[valid] = opp[rc[valid, 0], rc[valid, 1]]
    masks = []
    for s in sets:
        m = np.zeros(C, bool)
        m[np.asarray(s.neurons)] = True
        masks.append(m)
    feats = [np.empty(cache.embeddings.shape, dtype=np.float32) for _ in sets]
    chunks = _chunks(cache.n, batch_size)
    with tqdm(total=len(chunks) * len(sets), desc=f"regional lesions @ block {block}", disable=not progress) as bar:
        for sl in chunks:
            lesioned = _lesioned_embeddings(tower, cache.block_input(block, sl, tower.device), block, tokens,
                                            reuse_attention)
            for f, m in zip(feats, masks):
                f[sl] = lesioned(m)
                bar.update(1)
    correct_b, p_b = task.decide(cache.embeddings)
    margin_b = task.margin(cache.embeddings)
    tables = []
    for s, m, f in zip(sets, masks, feats):
        correct_a, p_a = task.decide(f)
        tables.append(pd.DataFrame(dict(
            lesion=s.kind, seed=s.seed, n_lesioned=int(m.sum()), stimulus=cache.indices, x=pos[:, 0], y=pos[:, 1],
            row=rc[:, 0], col=rc[:, 1], inside=inside, in_opposite=in_opp,
            correct_before=correct_b, correct_after=correct_a, p_before=p_b, p_after=p_a,
            margin_before=margin_b, margin_after=task.margin(f),
        )))
    df = pd.concat(tables, ignore_index=True)
    df["seed"] = df["seed"].astype("Int64")
    return df


def performance_maps(
    positions: np.ndarray,
    values: np.ndarray,
    bins: int,
    extent: Sequence[float],
    sigma: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Performance ratemaps: mean of per-stimulus values (e.g. correctness) in each bin.

    Uses ``helpers.ratemaps.ratemaps`` (NaN in empty bins; optional Gaussian
    smoothing ``sigma`` in bins).

    Parameters:
    positions : (n, 2) pixels
    values : (n,) or (n, k), e.g. ``np.c_[correct_before, correct_after]``

    Returns:
    maps : (k, bins, bins) float64
    occupancy : (bins, bins) int64
    """
    from helpers.ratemaps import ratemaps

    v = np.asarray(values, dtype=float)
    return ratemaps(np.asarray(positions, float), v if v.ndim == 2 else v[:, None], bins=bins, extent=extent, sigma=sigma)


# --------------------------------------------------------------------------- is the deficit localised?

#: Per-stimulus measures of a lesion's deficit (``before - after``; larger = more damage):
#: metric -> column stem in :func:`spatial_lesion_study`'s table.
DEFICIT_METRICS = {"margin": "margin", "p_target": "p", "correct": "correct"}

_CHUNK = 500  # resamples per vectorised chunk: bounded memory (500 x n)


def _check_labels(values: np.ndarray, inside: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v = np.asarray(values, dtype=float)
    ins = np.asarray(inside, dtype=bool)
    if v.ndim != 1 or ins.shape != v.shape:
        raise ValueError(f"per-stimulus values and inside must be 1-D of equal length, got {v.shape}, {ins.shape}")
    if not ins.any() or ins.all():
        raise ValueError("inside must select at least one stimulus and leave at least one outside")
    return v, ins


def _permutation_p(values: np.ndarray, inside: np.ndarray, n_permutations: int, rng: np.random.Generator) -> float:
    """One-sided p of ``mean(values[inside]) - mean(values[~inside])``, shuffling the ``inside`` labels.

    ``p = (1 + #{perm stat >= stat}) / (1 + n_permutations)``; vectorised in
    chunks of 500 permutations (``rng.permuted`` of tiled labels).
    """
    n_in, n = int(inside.sum()), inside.size
    total = values.sum()
    stat = inside @ values / n_in - (total - inside @ values) / (n - n_in)
    tol = 1e-9 * (1.0 + np.abs(values).max())  # ties (e.g. all values equal) count as >=
    hits = 0
    for s in range(0, n_permutations, _CHUNK):
        perm = rng.permuted(np.tile(inside, (min(_CHUNK, n_permutations - s), 1)), axis=1)
        s_in = perm @ values
        hits += int((s_in / n_in - (total - s_in) / (n - n_in) >= stat - tol).sum())
    return (1 + hits) / (1 + n_permutations)


def _bootstrap_ci(values: np.ndarray, inside: np.ndarray | None, n_bootstrap: int, ci: float,
                  rng: np.random.Generator) -> tuple[float, float]:
    """Percentile bootstrap CI of ``mean(values[inside]) - mean(values[~inside])`` (``inside=None``: of the mean).

    Stimuli are resampled with replacement within the inside and the outside
    group separately (stratified: the group sizes are kept); vectorised in
    chunks of 500 resamples.
    """
    groups = [values] if inside is None else [values[inside], values[~inside]]
    stats = []
    for s in range(0, n_bootstrap, _CHUNK):
        m = min(_CHUNK, n_bootstrap - s)
        means = [g[rng.integers(0, g.size, size=(m, g.size))].mean(axis=1) for g in groups]
        stats.append(means[0] if inside is None else means[0] - means[1])
    lo, hi = np.quantile(np.concatenate(stats), [(1 - ci) / 2, (1 + ci) / 2])
    return float(lo), float(hi)


def _check_fraction(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not 0 < float(v) < 1:
        raise ValueError(f"{name} must be a number in (0, 1), got {v!r}")
    return float(v)


def localisation_test(
    before: np.ndarray,
    after: np.ndarray,
    inside: np.ndarray,
    *,
    n_permutations: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, float]:
    """Blog-literal test: is one lesion's deficit ``before - after`` larger inside the region than outside?

    Statistic: mean deficit inside - mean deficit outside; one-sided p from
    :func:`scipy.stats.permutation_test` over the ``inside`` labels (``n_permutations``, seeded).
    Confounded (a uniform lesion looks localised where the baseline is near the decision
    boundary): :func:`localisation_did` is the sound test.

    Returns dict ``deficit_inside, deficit_outside, difference, p_value, n_inside, n_outside`` and
    ``localised`` (``difference > 0`` and ``p_value < alpha``).
    """
    from scipy.stats import permutation_test

    b = np.asarray(before, dtype=float)
    a = np.asarray(after, dtype=float)
    if b.shape != a.shape:
        raise ValueError(f"before and after must have equal shapes, got {b.shape}, {a.shape}")
    d, ins = _check_labels(b - a, inside)
    n_permutations, alpha = check_int("n_permutations", n_permutations, 1), _check_fraction("alpha", alpha)
    res = permutation_test((d[ins], d[~ins]), _mean_difference, permutation_type="independent", vectorized=True,
                           n_resamples=n_permutations, alternative="greater", rng=np.random.default_rng(seed))
    stat, p = float(res.statistic), float(res.pvalue)
    return dict(
        deficit_inside=float(d[ins].mean()), deficit_outside=float(d[~ins].mean()), difference=stat,
        p_value=p, n_inside=int(ins.sum()), n_outside=int((~ins).sum()), localised=bool(stat > 0 and p < alpha),
    )


def _mean_difference(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return x.mean(axis=axis) - y.mean(axis=axis)


def localisation_did(
    before: np.ndarray,
    after: np.ndarray,
    control_after: np.ndarray,
    inside: np.ndarray,
    *,
    n_permutations: int = 2000,
    n_bootstrap: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, float]:
    """Is the region lesion's deficit localised, relative to a matched control lesion? Difference in differences.

    Per stimulus ``i``: region deficit ``d_i = before_i - after_i``, control
    deficit ``c_i = before_i - control_after_i`` (averaged over the control
    lesions when there are several, e.g. random seeds), excess ``e_i = d_i - c_i``.
    DiD = (mean d inside - mean d outside) - (mean c inside - mean c outside)
    = mean e inside - mean e outside. A lesion that shifts every stimulus
    alike, whatever the baseline, has ``e = 0`` and DiD = 0.

    - p-value: one-sided, permuting the ``inside`` labels of ``e``
      (``n_permutations``; H0: the excess deficit does not depend on being
      inside the region).
    - CI: percentile bootstrap (``n_bootstrap``), stimuli resampled within the
      inside and outside groups, each carrying its pair (d_i, c_i).
    - One ``numpy.random.default_rng(seed)`` drives both; vectorised in chunks.

    Parameters:
    before, after : (n,) the measure without and with the region lesion.
    control_after : (n,) or (n, s), the measure under ``s`` control lesions.
    inside : (n,) bool, stimulus in the region.

    Returns:
    dict with ``deficit_inside, deficit_outside`` (region lesion),
    ``control_deficit_inside, control_deficit_outside``, ``did, ci_low,
    ci_high, p_value``, ``localised`` (``did > 0`` and ``p_value < alpha``),
    ``n_inside, n_outside, n_controls`` and ``did_control_sd`` (SD of the DiD
    over the individual control lesions, ``ddof=1``; NaN for one control).
    """
    b = np.asarray(before, dtype=float)
    a = np.asarray(after, dtype=float)
    c = np.asarray(control_after, dtype=float)
    c = c[:, None] if c.ndim == 1 else c
    if b.shape != a.shape or b.ndim != 1 or c.ndim != 2 or c.shape[0] != b.shape[0] or c.shape[1] == 0:
        raise ValueError(f"before, after must be (n,) and control_after (n,) or (n, s); got {b.shape}, {a.shape}, "
                         f"{np.shape(control_after)}")
    n_permutations = check_int("n_permutations", n_permutations, 1)
    n_bootstrap = check_int("n_bootstrap", n_bootstrap, 1)
    ci, alpha = _check_fraction("ci", ci), _check_fraction("alpha", alpha)
    d = b - a
    cd = b[:, None] - c  # (n, s) control deficits
    e, ins = _check_labels(d - cd.mean(axis=1), inside)
    rng = np.random.default_rng(seed)
    did = float(e[ins].mean() - e[~ins].mean())
    p = _permutation_p(e, ins, n_permutations, rng)
    lo, hi = _bootstrap_ci(e, ins, n_bootstrap, ci, rng)
    per_control = (d[ins].mean() - d[~ins].mean()) - (cd[ins].mean(axis=0) - cd[~ins].mean(axis=0))
    return dict(
        deficit_inside=float(d[ins].mean()), deficit_outside=float(d[~ins].mean()),
        control_deficit_inside=float(cd[ins].mean()), control_deficit_outside=float(cd[~ins].mean()),
        did=did, ci_low=lo, ci_high=hi, p_value=p, localised=bool(did > 0 and p < alpha),
        n_inside=int(ins.sum()), n_outside=int((~ins).sum()), n_controls=int(c.shape[1]),
        did_control_sd=float(per_control.std(ddof=1)) if per_control.size > 1 else float("nan"),
    )


def lesion_values(df, column: str, *, mean_over_seeds: bool = False) -> dict[str, np.ndarray]:
    """Per-stimulus values of one column of :func:`spatial_lesion_study`'s table, by lesion kind.

    Returns:
    dict kind -> array, rows in the region lesion's stimulus order:
    ``(n,)`` for ``region`` and ``opposite``, ``(n, s)`` for ``random``
    (one column per seed, ascending; ``(n,)``, the mean over seeds, with
    ``mean_over_seeds=True``). Kinds absent from ``df`` are absent.
    """
    reg = df[df["lesion"] == "region"]
    if len(reg) == 0:
        raise ValueError("df holds no 'region' lesion rows (spatial_lesion_study output expected)")
    order = reg["stimulus"].to_numpy()
    out = {}
    for kind, g in df.groupby("lesion", sort=False):
        if kind == "random":  # (n, s): one column per seed
            wide = g.pivot(index="stimulus", columns="seed", values=column).sort_index(axis=1)
        else:
            wide = g.set_index("stimulus")[column]
        v = wide.reindex(order).to_numpy(dtype=float)
        out[kind] = v.mean(axis=1) if mean_over_seeds and v.ndim == 2 else v
    return out


def lesion_maps(df, bins: int, extent: Sequence[float], sigma: float | None = None,
                stems: Sequence[str] = ("margin", "p", "correct")) -> dict[str, np.ndarray]:
    """Maps over the visual field of per-stimulus measures before and after each lesion kind.

    Parameters:
    df : :func:`spatial_lesion_study` output (one model); positions from its ``x, y``.
    bins, extent, sigma : as :func:`performance_maps`.
    stems : column stems, e.g. ``"margin"`` for ``margin_before`` / ``margin_after``.

    Returns:
    dict ``"before"`` and each lesion kind present -> (len(stems), bins, bins)
    float64; ``random`` is the per-stimulus mean over seeds.
    """
    reg = df[df["lesion"] == "region"]
    pos = reg[["x", "y"]].to_numpy(dtype=float)
    cols = {"before": [lesion_values(df, f"{s}_before")["region"] for s in stems]}
    for s in stems:
        for kind, v in lesion_values(df, f"{s}_after", mean_over_seeds=True).items():
            cols.setdefault(kind, []).append(v)
    names = list(cols)
    maps, _ = performance_maps(pos, np.column_stack([v for k in names for v in cols[k]]), bins, extent, sigma)
    k = len(stems)
    return {name: maps[i * k:(i + 1) * k] for i, name in enumerate(names)}


def localisation_table(
    df,
    *,
    metrics: Sequence[str] = tuple(DEFICIT_METRICS),
    n_permutations: int = 2000,
    n_bootstrap: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
    alpha: float = 0.05,
):
    """Difference-in-differences localisation of the region lesion, against each control, per metric.

    For every metric of :data:`DEFICIT_METRICS`, every control kind present
    (``opposite``; ``random``, averaged over seeds) and two reference groups
    of stimuli (``"outside"``: every stimulus outside the region; ``"opposite
    region"``: only those in the opposite region, where the DiD against the
    opposite lesion is the double-dissociation interaction), one row of
    :func:`localisation_did` and, beside it, the blog-literal
    :func:`localisation_test` of the region lesion alone on the same stimuli
    (``literal_*`` columns).

    Parameters:
    df : :func:`spatial_lesion_study` output for one model (with control lesions).

    Returns:
    pandas.DataFrame with columns ``metric, control, reference, n_controls,
    deficit_inside, deficit_outside, control_deficit_inside,
    control_deficit_outside, did, ci_low, ci_high, p_value, localised,
    did_control_sd, n_inside, n_outside, literal_difference, literal_p_value,
    literal_localised``.
    """
    import pandas as pd

    bad = [m for m in metrics if m not in DEFICIT_METRICS]
    if bad or not metrics:
        raise ValueError(f"metrics must be a non-empty subset of {tuple(DEFICIT_METRICS)}, got {list(metrics)!r}")
    first = lesion_values(df, "inside")
    controls = [k for k in ("opposite", "random") if k in first]
    if not controls:
        raise ValueError("df holds no control lesion ('opposite' or 'random'); run spatial_lesion_study with "
                         "matched_lesions(...)")
    inside = first["region"].astype(bool)
    in_opp = lesion_values(df, "in_opposite")["region"].astype(bool)
    refs = {"outside": np.ones_like(inside), "opposite region": inside | in_opp}
    kw = dict(n_permutations=n_permutations, seed=seed, alpha=alpha)
    rows = []
    for metric in metrics:
        stem = DEFICIT_METRICS[metric]
        before = lesion_values(df, f"{stem}_before")["region"]
        after = lesion_values(df, f"{stem}_after")
        for ref, sel in refs.items():
            lit = localisation_test(before[sel], after["region"][sel], inside[sel], **kw)
            for control in controls:
                res = localisation_did(before[sel], after["region"][sel], after[control][sel], inside[sel],
                                       n_bootstrap=n_bootstrap, ci=ci, **kw)
                rows.append(dict(metric=metric, control=control, reference=ref, **res,
                                 literal_difference=lit["difference"], literal_p_value=lit["p_value"],
                                 literal_localised=lit["localised"]))
    cols = ["metric", "control", "reference", "n_controls", "deficit_inside", "deficit_outside",
            "control_deficit_inside", "control_deficit_outside", "did", "ci_low", "ci_high", "p_value", "localised",
            "did_control_sd", "n_inside", "n_outside", "literal_difference", "literal_p_value", "literal_localised"]
    return pd.DataFrame(rows)[cols]


def dissociation_table(
    df,
    *,
    metrics: Sequence[str] = tuple(DEFICIT_METRICS),
    n_bootstrap: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
):
    """Mean deficit of each lesion on the stimuli in the region and in the opposite region.

    The cells of a double dissociation: lesion (region / opposite / random,
    random averaged over seeds per stimulus) x stimuli (in the region / in the
    opposite region). A double dissociation: the region lesion hurts region
    stimuli more than opposite ones, and the opposite lesion the reverse (its
    test is :func:`localisation_table`'s row ``control="opposite",
    reference="opposite region"``). CI: percentile bootstrap of the mean over
    stimuli (``numpy.random.default_rng(seed)``).

    Returns:
    pandas.DataFrame with columns ``metric, lesion, stimuli, mean_deficit,
    ci_low, ci_high, n_stimuli``.
    """
    import pandas as pd

    bad = [m for m in metrics if m not in DEFICIT_METRICS]
    if bad or not metrics:
        raise ValueError(f"metrics must be a non-empty subset of {tuple(DEFICIT_METRICS)}, got {list(metrics)!r}")
    n_bootstrap, ci = check_int("n_bootstrap", n_bootstrap, 1), _check_fraction("ci", ci)
    groups = {"region": lesion_values(df, "inside")["region"].astype(bool),
              "opposite": lesion_values(df, "in_opposite")["region"].astype(bool)}
    rng = np.random.default_rng(seed)
    rows = []
    for metric in metrics:
        stem = DEFICIT_METRICS[metric]
        before = lesion_values(df, f"{stem}_before")["region"]
        for kind, after in lesion_values(df, f"{stem}_after", mean_over_seeds=True).items():
            d = before - after
            for stimuli, sel in groups.items():
                lo, hi = _bootstrap_ci(d[sel], None, n_bootstrap, ci, rng) if sel.any() else (np.nan, np.nan)
                rows.append(dict(metric=metric, lesion=kind, stimuli=stimuli,
                                 mean_deficit=float(d[sel].mean()) if sel.any() else np.nan,
                                 ci_low=lo, ci_high=hi, n_stimuli=int(sel.sum())))
    return pd.DataFrame(rows)


def double_dissociation(table):
    """Per metric: does the region lesion hurt region A more than B, and the opposite lesion B more than A?

    Read from :func:`localisation_table`'s rows ``control="opposite",
    reference="opposite region"`` (stimuli in A = the region, in B = the
    opposite region).

    Returns:
    pandas.DataFrame, one row per metric: ``a_on_a, a_on_b, b_on_a, b_on_b``
    (mean deficit of lesion A/B on stimuli in A/B), ``interaction`` =
    ``(a_on_a - a_on_b) - (b_on_a - b_on_b)`` (the DiD) with ``ci_low,
    ci_high, p_value``, ``crossed`` (``a_on_a > a_on_b`` and ``b_on_b >
    b_on_a``) and ``dissociated`` (crossed and the interaction significant).
    """
    import pandas as pd

    rows = table[(table["control"] == "opposite") & (table["reference"] == "opposite region")]
    if len(rows) == 0:
        raise ValueError("table holds no control='opposite', reference='opposite region' rows (localisation_table)")
    out = pd.DataFrame(dict(
        metric=rows["metric"].to_numpy(),
        a_on_a=rows["deficit_inside"].to_numpy(), a_on_b=rows["deficit_outside"].to_numpy(),
        b_on_a=rows["control_deficit_inside"].to_numpy(), b_on_b=rows["control_deficit_outside"].to_numpy(),
        interaction=rows["did"].to_numpy(), ci_low=rows["ci_low"].to_numpy(), ci_high=rows["ci_high"].to_numpy(),
        p_value=rows["p_value"].to_numpy(),
    ))
    out["crossed"] = (out["a_on_a"] > out["a_on_b"]) & (out["b_on_b"] > out["b_on_a"])
    out["dissociated"] = out["crossed"] & rows["localised"].to_numpy(dtype=bool)
    return out


def stack_conditions(tables: Mapping[str, "pd.DataFrame"]):
    """One table from ``{weights condition: table}``: the rows in order, a leading ``weights`` column."""
    import pandas as pd

    out = []
    for cond, table in tables.items():
        table = table.copy()
        table.insert(0, "weights", cond)
        out.append(table)
    return pd.concat(out, ignore_index=True)


def localisation_verdicts(localisation):
    """Verdicts against the ``outside`` reference: one row per (weights, metric), one bool column per control + blog-literal."""
    ref = localisation[localisation.reference == "outside"]
    verdicts = ref.pivot_table(index=["weights", "metric"], columns="control", values="localised", sort=False)
    verdicts.columns = [f"DiD vs {c}" for c in verdicts.columns]
    literal = ref.groupby(["weights", "metric"], sort=False)["literal_localised"].first()
    verdicts["blog-literal (region lesion alone)"] = literal
    return verdicts.astype(bool)
