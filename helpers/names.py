"""Names of CLIP modules: the open_clip path is a module's name; every other label is derived here.

Vocabulary: a *layer* is a recorded module, named by its open_clip path
(``visual.transformer.resblocks.9.attn``); a *block* is a residual block's index (``9``).
"""

from __future__ import annotations

import re

BLOCK_RE = re.compile(r"^(?P<visual>visual\.)?(?P<text>text\.)?transformer\.resblocks\.(?P<i>\d+)(?:\.(?P<sub>.+))?$")

_BLOCK_SUFFIX = {
    None: ("hook_resid_post", "residual stream after block {i} (block output)"),
    "ln_1": ("ln1.hook_normalized", "block {i} pre-attention LayerNorm output"),
    "attn": ("hook_attn_out", "block {i} attention output (before the residual add)"),
    "ls_1": ("hook_attn_out_scaled", "block {i} attention output after LayerScale"),
    "ln_2": ("ln2.hook_normalized", "block {i} pre-MLP LayerNorm output"),
    "mlp": ("hook_mlp_out", "block {i} MLP output (before the residual add)"),
    "mlp.c_fc": ("mlp.hook_pre", "block {i} MLP hidden units before the nonlinearity"),
    "mlp.gelu": ("mlp.hook_post", "block {i} MLP hidden units after the nonlinearity"),
    "mlp.c_proj": ("mlp.hook_out", "block {i} MLP output projection"),
    "ls_2": ("hook_mlp_out_scaled", "block {i} MLP output after LayerScale"),
}

_OTHER_NAMES = {
    "visual": ("image.hook_pooled", "image embedding (pooled and projected)"),
    "visual.conv1": ("image.hook_patch_embed", "patch embedding (conv1), before the class token is prepended"),
    "visual.ln_pre": ("image.hook_ln_pre", "token embeddings after ln_pre (input to block 0)"),
    "visual.transformer": ("image.hook_resid_final", "residual stream after the last block"),
    "visual.ln_post": ("image.hook_ln_post", "final LayerNorm output"),
    "token_embedding": ("text.hook_embed", "token embeddings"),
    "transformer": ("text.hook_resid_final", "text residual stream after the last block"),
    "ln_final": ("text.hook_ln_final", "text final LayerNorm output"),
}


def block_module(block: int, sub: str | None = "attn", tower: str = "visual") -> str:
    """open_clip path of block ``block``'s ``sub`` module (``None``: the block), e.g. ``visual.transformer.resblocks.9.attn``."""
    prefix = "visual.transformer.resblocks" if tower == "visual" else "transformer.resblocks"
    return f"{prefix}.{int(block)}" + (f".{sub}" if sub else "")


def tower_of(name: str) -> str:
    """``"image"`` for modules under ``visual``, ``"text"`` otherwise."""
    return "image" if name == "visual" or name.startswith("visual.") else "text"


def hook_name(name: str) -> str:
    """TransformerLens-style label, e.g. ``image.blocks.3.hook_attn_out`` (unknown: ``<tower>.<name>``)."""
    m = BLOCK_RE.match(name)
    if m and m.group("sub") in _BLOCK_SUFFIX:
        return f"{tower_of(name)}.blocks.{m.group('i')}.{_BLOCK_SUFFIX[m.group('sub')][0]}"
    if name in _OTHER_NAMES:
        return _OTHER_NAMES[name][0]
    return f"{tower_of(name)}.{name}"


def describe(name: str) -> str:
    """One-line plain-language description of a module's output."""
    m = BLOCK_RE.match(name)
    if m and m.group("sub") in _BLOCK_SUFFIX:
        return f"{tower_of(name)} tower: " + _BLOCK_SUFFIX[m.group("sub")][1].format(i=m.group("i"))
    if name in _OTHER_NAMES:
        return f"{tower_of(name)} tower: {_OTHER_NAMES[name][1]}"
    return f"{tower_of(name)} tower: output of {name}"


def label(name: str) -> str:
    """Short axis label, e.g. ``L3 attn``, ``L3 resid``, ``T0 mlp`` (text tower)."""
    m = BLOCK_RE.match(name)
    if m:
        sub = m.group("sub") or "resid"
        return f"{'T' if tower_of(name) == 'text' else 'L'}{m.group('i')} {sub}"
    return name.replace("visual.", "")


def block_label(name: str) -> str:
    """``visual.transformer.resblocks.9.attn`` -> ``block 9`` (the report's prose); other names unchanged."""
    parts = name.split(".")
    return f"block {parts[3]}" if len(parts) > 3 and parts[2] == "resblocks" else name


def unit_label(block: int | None, part: str) -> str:
    """A lesion unit's label (the layer-lesion table's ``label``): ``conv1``, ``resblock 9``, ``resblock 9 attn``."""
    if block is None:
        return part
    return f"resblock {block}" + ("" if part == "block" else f" {part}")
