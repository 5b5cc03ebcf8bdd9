"""The study's parameters: one declaration of every parameter's valid values, checked before any stage runs.

The notebooks' ``parameters`` cells hold the defaults (papermill injects
overrides below them); :data:`SPEC` says what each parameter may be, and
:func:`validate` checks a whole parameter set at once, so a bad value is refused
in seconds instead of after an hour of Perturb (``block=12``,
``proportions=[1.5]``). Checks that need the model (its name, its number of
blocks, the device) run here too, from open_clip's config, without building it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from helpers.checks import is_int

#: Token selections whose recordings 03 and 04 can map: one vector per stimulus and neuron.
STUDY_TOKENS = ("cls", "mean")

#: Smallest ratemap side the scores accept (the BNT grid score needs 5 x 5).
MIN_BINS = 5


def _int(lo: int | None = None, hi: int | None = None) -> Callable[[Any], bool]:
    return lambda v: is_int(v, lo, hi)


def _float(lo: float, hi: float, *, open_lo: bool = False, open_hi: bool = False) -> Callable[[Any], bool]:
    def ok(v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not np.isfinite(v):
            return False
        return (v > lo if open_lo else v >= lo) and (v < hi if open_hi else v <= hi)
    return ok


def _one_of(*values: Any) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, str) and v in values


def _bool(v: Any) -> bool:
    return isinstance(v, bool)


def _text(v: Any) -> bool:
    return isinstance(v, str) and v.strip() != ""


def _subset(values: tuple) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and all(x in values for x in v)


def _proportions(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) > 0 and all(_float(0, 1)(p) for p in v)


def _layers(v: Any) -> bool:
    return _text(v) or (isinstance(v, (list, tuple)) and len(v) > 0 and all(_text(x) for x in v))


def _prompts(v: Any) -> bool:
    return (isinstance(v, Mapping) and len(v) >= 2 and "circle" in v
            and all(_text(k) and _text(t) for k, t in v.items()))


@dataclass(frozen=True)
class Param:
    """One parameter: a predicate and the words that say what it accepts."""

    ok: Callable[[Any], bool]
    valid: str


def _spec() -> dict[str, Param]:
    from helpers.lesions import LESION_MODES, REGION_RULES, REGIONS
    from helpers.models import DTYPE_CHOICES
    from helpers.record import STORAGE_DTYPES
    from helpers.scores import BORDER_NULLS, NULL_MODELS, SIGNIFICANCE_RULES
    from helpers.stimuli import COLOURS, SHAPES

    seed = Param(_int(0), "an integer >= 0")
    return {
        "model": Param(_text, "an open_clip model name"),
        "weights": Param(_text, "a pretrained tag, a .pt/.safetensors path, 'random', or 'control-spatial'/'control-nonspatial'"),
        "n_stimuli": Param(_int(1), "an integer >= 1"),
        "seed": seed,
        "random_seed": seed,
        "shuffle_seed": seed,
        "diameter_min": Param(_float(0, 10_000, open_lo=True), "a number of pixels > 0"),
        "diameter_max": Param(_float(0, 10_000, open_lo=True), "a number of pixels > 0, >= diameter_min"),
        "shapes": Param(_subset(SHAPES), f"a non-empty list from {list(SHAPES)}"),
        "colours": Param(_subset(tuple(COLOURS)), f"a non-empty list from {list(COLOURS)}"),
        "inside": Param(_bool, "true or false"),
        "grid": Param(_int(1, 20), "an integer in 1..20"),
        "device": Param(_text, "'auto', 'cpu', 'cuda[:N]' or 'mps'"),
        "dtype": Param(_one_of(*DTYPE_CHOICES), f"one of {list(DTYPE_CHOICES)} ('auto': bfloat16 where the device runs it natively)"),
        "storage_dtype": Param(_one_of(*STORAGE_DTYPES), f"one of {sorted(STORAGE_DTYPES)}"),
        "batch_size": Param(_int(1), "an integer >= 1"),
        "layers": Param(_layers, "a module name or glob, or a non-empty list of them"),
        "tokens": Param(_one_of(*STUDY_TOKENS), f"one of {list(STUDY_TOKENS)}: 03 maps one vector per stimulus "
                        "('patches' and 'all' are for helpers.record.record directly)"),
        "include_random": Param(_bool, "true or false"),
        "perturb_random": Param(_bool, "true or false"),
        "overwrite": Param(_bool, "true or false"),
        "interactive": Param(_bool, "true or false"),
        "sublayers": Param(_bool, "true or false"),
        "run_dir": Param(_text, "a run name or folder"),
        "bins": Param(_int(MIN_BINS, 200), f"an integer in {MIN_BINS}..200"),
        "sigma": Param(lambda v: v is None or _float(0, 100)(v), "None or a number of bins in 0..100"),
        "n_shuffles": Param(_int(0), "an integer >= 0 (0: no significance test)"),
        "percentile": Param(_float(0, 100, open_lo=True, open_hi=True), "a number in (0, 100)"),
        "null_model": Param(_one_of(*NULL_MODELS), f"one of {list(NULL_MODELS)}"),
        "significance_rule": Param(_one_of(*SIGNIFICANCE_RULES), f"one of {list(SIGNIFICANCE_RULES)}: 'floor' also "
                                   "needs grid and border scores > 0, 'null_only' is the blog's threshold-only rule"),
        "border_null": Param(_one_of(*BORDER_NULLS), f"one of {list(BORDER_NULLS)}: 'surrogate' tests the border "
                             "score against smoothness-preserving surrogates of each map, 'shuffle' against "
                             "stimulus shuffles"),
        "top_k": Param(_int(1), "an integer >= 1"),
        "decoding_folds": Param(_int(2), "an integer in 2..n_stimuli"),
        "decoding_seed": seed,
        "block": Param(_int(0), "a block index 0..depth-1 of the model's image tower"),
        "proportions": Param(_proportions, "a non-empty list of numbers in [0, 1]"),
        "n_random_seeds": Param(_int(0), "an integer >= 0"),
        "lesion_mode": Param(_one_of(*LESION_MODES), f"one of {list(LESION_MODES)}"),
        "prompts": Param(_prompts, "a mapping of >= 2 labels to prompt texts, including the label 'circle'"),
        "n_lesion_stimuli": Param(lambda v: v is None or _int(1)(v), "None or an integer in 1..n_stimuli"),
        "region": Param(_one_of(*REGIONS), f"one of {list(REGIONS)}"),
        "region_rule": Param(_one_of(*REGION_RULES), f"one of {list(REGION_RULES)}"),
        "region_proportion": Param(_float(0, 1, open_lo=True), "a number in (0, 1]"),
        "n_control_seeds": Param(_int(1), "an integer >= 1"),
        "n_permutations": Param(_int(1), "an integer >= 1"),
        "n_bootstrap": Param(_int(1), "an integer >= 1"),
    }


SPEC: dict[str, Param] = _spec()

#: Renamed parameters, old name -> new name (``layer`` now means a recorded module, helpers.names).
RENAMED = {"layer": "block"}


def upgrade(params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` with every old name of :data:`RENAMED` replaced by its new name, with a FutureWarning.

    Raises:
    ValueError — Both the old and the new name are given.
    """
    out = dict(params)
    for old, new in RENAMED.items():
        if old not in out:
            continue
        if new in out:
            raise ValueError(f"{old}={out[old]!r} and {new}={out[new]!r} given: {old!r} is the old name of {new!r}; "
                             f"give {new} only")
        warnings.warn(f"parameter {old!r} is now called {new!r} (a residual-block index); write {new}: {out[old]!r}",
                      FutureWarning, stacklevel=2)
        out[new] = out.pop(old)
    return out


def validate(params: Mapping[str, Any]) -> None:
    """Check every parameter, alone and against the others, before any stage runs.

    Raises:
    ValueError — Listing every bad parameter with its value and what it accepts.
    """
    errors = [f"{k}={v!r}: must be {SPEC[k].valid}" for k, v in params.items() if k in SPEC and not SPEC[k].ok(v)]
    bad = {e.split("=", 1)[0] for e in errors}
    errors += [e for e in _cross_checks(params, bad) if e]
    if errors:
        raise ValueError("invalid parameters:\n  - " + "\n  - ".join(errors))


def _cross_checks(p: Mapping[str, Any], bad: set[str]) -> list[str]:
    out = []
    if {"diameter_min", "diameter_max"} <= set(p) - bad and p["diameter_min"] > p["diameter_max"]:
        out.append(f"diameter_min={p['diameter_min']!r} must be <= diameter_max={p['diameter_max']!r}")
    n, k = p.get("n_stimuli"), p.get("n_lesion_stimuli")
    if k is not None and not {"n_stimuli", "n_lesion_stimuli"} & bad and n is not None and k > n:
        out.append(f"n_lesion_stimuli={k!r} must be <= n_stimuli={n!r}")
    s, q = p.get("n_shuffles"), p.get("percentile")
    if p.get("null_model") == "neuron" and s and q is not None and not {"n_shuffles", "percentile"} & bad:
        from helpers.scores import min_shuffles

        if s < min_shuffles(q):
            out.append(f"n_shuffles={s!r} must be 0 or >= {min_shuffles(q)} at percentile={q!r}: a neuron tested "
                       "against its own shuffles can't reach p < 1 - percentile/100 with fewer")
    f = p.get("decoding_folds")
    if f is not None and not {"n_stimuli", "decoding_folds"} & bad and n is not None and f > n:
        out.append(f"decoding_folds={f!r} must be <= n_stimuli={n!r}")
    if "device" in p and "device" not in bad:
        out.append(_device_error(p["device"]))
    if "model" in p and "model" not in bad:
        out.append(_model_error(p["model"], None if "block" in bad else p.get("block")))
    return out


def _device_error(device: str) -> str:
    from helpers.models import resolve_device

    try:
        resolve_device(device)
    except ValueError as e:
        return f"device={device!r}: {e}"
    return ""


def _model_error(model: str, block: int | None) -> str:
    """Unknown model, or a block index the model's image tower does not have (from its config)."""
    import open_clip

    from helpers.models import available_models

    if model not in available_models():
        return f"model={model!r}: must be one of open_clip's models (helpers.models.available_models())"
    depth = (open_clip.get_model_config(model) or {}).get("vision_cfg", {}).get("layers")
    if block is not None and isinstance(depth, int) and not block < depth:
        return f"block={block!r}: must be a block index in 0..{depth - 1} ({model} has {depth} image blocks)"
    return ""
