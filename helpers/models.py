"""Loading open_clip models (:func:`load_model`) and zero-shot classification (Radford et al. 2021: cosine of
L2-normalised embeddings times ``logit_scale``, softmax over prompts).

``weights``: an open_clip pretrained tag (``"openai"``; local caches first, hub offline when unreachable so a
missing file fails fast with :class:`WeightsUnavailableError`; QuickGELU where the tag was trained with it); a
local ``.pt``/``.pth``/``.bin``/``.safetensors`` file (open_clip's strict loader); ``"random"`` (open_clip's init
after ``torch.manual_seed(seed)``, bit-identical per seed; the blog's control); ``"control-spatial"`` /
``"control-nonspatial"`` (:mod:`helpers.control`, model ``ViT-B-32-control`` only, implied by the weights).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import platform
import socket
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence
from urllib.parse import urlparse

import numpy as np
import torch

from helpers.checks import check_int
from helpers.ratemaps import flat_bin_indices

#: Weights value meaning "seeded random initialisation".
RANDOM = "random"

#: Files recognised as local checkpoints.
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")

#: The blog's three prompt sets; keys are table rows, each maps a column label
#: to the prompt text.
PROMPT_SETS: dict[str, dict[str, str]] = {
    "shape only": {"circle": "a circle", "square": "a square", "triangle": "a triangle"},
    "+ empty": {
        "circle": "a circle",
        "square": "a square",
        "triangle": "a triangle",
        "empty": "an empty image",
    },
    "+ colour": {
        "circle": "a black circle",
        "square": "a black square",
        "triangle": "a black triangle",
        "empty": "an empty image",
    },
}

#: The 2-way task used to measure behaviour in the Perturb stage.
CIRCLE_VS_EMPTY: dict[str, str] = {"circle": "a black circle", "empty": "an empty image"}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

#: ``dtype`` value meaning "bfloat16 where the device runs it natively, else float32" (:func:`choose_dtype`).
AUTO = "auto"

#: Every ``dtype`` value :func:`load_model` accepts.
DTYPE_CHOICES = (AUTO, *DTYPES)


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights were requested but cannot be had (offline, not cached)."""


@dataclass(frozen=True)
class LoadedModel:
    """A model together with everything needed to feed it.

    Attributes:
    model : torch.nn.Module — The open_clip CLIP model, in eval mode, on ``device`` in ``dtype``.
    preprocess : callable — open_clip's evaluation transform: PIL image -> float tensor (3, S, S).
    tokenizer : callable — open_clip's tokenizer for this model: list[str] -> LongTensor.
    name : str — open_clip model name as built (e.g. ``"ViT-B-32"``).
    weights : str — What was asked for: a tag, a file path, or ``"random"``.
    seed : int or None — Seed of the random initialisation (``weights="random"`` only).
    device : torch.device
    dtype : torch.dtype — Parameter and activation dtype.
    input_size : int — Side of the square model input in pixels (224 for ViT-B/32).
    quick_gelu : bool — Whether the MLPs use QuickGELU (``x * sigmoid(1.702 x)``).
    """

    model: torch.nn.Module
    preprocess: Callable
    tokenizer: Callable
    name: str
    weights: str
    seed: int | None
    device: torch.device
    dtype: torch.dtype
    input_size: int
    quick_gelu: bool
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def label(self) -> str:
        """Short human label, e.g. ``"ViT-B-32 / random (seed 0)"``."""
        w = f"random (seed {self.seed})" if self.weights == RANDOM else Path(self.weights).name
        return f"{self.name} / {w}"


# --------------------------------------------------------------------------- devices


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Pick a torch device.

    Parameters:
    device : str or torch.device — ``"auto"`` picks CUDA, then Apple MPS, then CPU. Anything else is passed to
        :class:`torch.device` and must be available.

    Returns:
    torch.device
    """
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda[:N]' or 'mps', got {device!r}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but CUDA is not available; use device='auto' or 'cpu'")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("device='mps' was requested but MPS is not available; use device='auto' or 'cpu'")
    return dev


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device = "cpu") -> torch.dtype:
    """Map ``"auto" | "float32" | "bfloat16" | "float16"`` (or a torch dtype) to a torch dtype on ``device``.

    ``"auto"`` is :func:`choose_dtype`'s pick. An explicit ``"bfloat16"`` on a
    device without native bf16 warns (RuntimeWarning) with the measured slowdown.
    """
    return choose_dtype(dtype, device)[0]


def choose_dtype(dtype: str | torch.dtype, device: str | torch.device = "cpu") -> tuple[torch.dtype, str]:
    """The compute dtype for ``dtype`` on ``device``, and the reason in words (recorded in model.json).

    ``"auto"`` picks bfloat16 only where :func:`native_bf16` says the device runs it
    natively, float32 otherwise. bf16 changes the numbers (features agree with fp32
    to a cosine >= 0.9999; see notebook 02's agreement table), so the dtype actually
    used is what model.json and the recording manifests record. An explicit
    bfloat16 without native support is run as asked, with a RuntimeWarning giving
    the slowdown measured by :func:`matmul_peaks` (emulated bf16: about 10x slower).
    """
    if isinstance(dtype, torch.dtype):
        return dtype, "given as a torch dtype"
    if dtype not in DTYPE_CHOICES:
        raise ValueError(f"dtype must be one of {list(DTYPE_CHOICES)}, got {dtype!r}")
    dev = torch.device(device)
    native, why = native_bf16(dev)
    if dtype == AUTO:
        return (torch.bfloat16 if native else torch.float32), f"auto: {why}"
    if dtype == "bfloat16" and not native:
        msg = f"dtype='bfloat16' on a device without native bf16 ({why})"
        if dev.type == "cpu":
            p = matmul_peaks()
            msg += (f": bf16 matmuls measured {p['float32'] / p['bfloat16']:.1f}x slower than float32 here "
                    f"({p['bfloat16']:.0f} vs {p['float32']:.0f} GFLOP/s)")
        warnings.warn(msg + "; dtype='auto' or 'float32' is faster", RuntimeWarning, stacklevel=3)
        return torch.bfloat16, f"asked for; {why}"
    return DTYPES[dtype], "asked for"


def _cpu_flags() -> set[str]:
    """CPU feature flags from /proc/cpuinfo (``flags`` on x86, ``Features`` on ARM); empty where unreadable."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def native_bf16(device: str | torch.device = "cpu") -> tuple[bool, str]:
    """Whether ``device`` runs bfloat16 natively, and the evidence in words.

    The rule (no timing, so it is the same on every call):

    - CUDA: ``torch.cuda.is_bf16_supported()`` (Ampere and later).
    - CPU, x86: ATen's vector capability (``torch.backends.cpu.get_cpu_capability()``)
      is ``AVX512`` *and* the CPU flags include ``avx512_bf16`` or ``amx_bf16``.
      AVX2-only CPUs (e.g. AMD Zen 3) and AVX-512 CPUs without bf16 (Skylake)
      emulate bf16, about 10x slower than fp32 (``shared/reference/NOTES.md``).
    - CPU, ARM: the ``bf16`` feature flag (Armv8.6 BF16 instructions).
    - Anything else (MPS, unreadable flags): not native.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        ok = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
        return ok, f"CUDA {'with' if ok else 'without'} bf16 support"
    if dev.type != "cpu":
        return False, f"{dev.type} is not checked for native bf16"
    cap = torch.backends.cpu.get_cpu_capability()
    flags = _cpu_flags()
    have = sorted(flags & {"avx512_bf16", "amx_bf16"})
    if have and cap.startswith("AVX512"):
        return True, f"CPU capability {cap} with {'+'.join(have)}"
    if platform.machine().lower() in ("aarch64", "arm64") and "bf16" in flags:
        return True, f"CPU capability {cap}, ARM bf16 feature"
    return False, f"CPU capability {cap} without avx512_bf16/amx_bf16 (bf16 emulated)"


@functools.lru_cache(maxsize=None)
def matmul_peaks(size: int = 512, seconds: float = 0.25) -> dict[str, float]:
    """Measured matmul throughput of this CPU, GFLOP/s per dtype (``float32``, ``bfloat16``).

    ``size`` x ``size`` matmuls are repeated for about ``seconds`` per dtype (at
    least 3, after one warm-up; torch's current thread count); the fastest one
    counts, so load from other processes lowers the figure less. Cached per
    process. The benchmarks' "share of peak" is taken against it (``size=1024``).
    """
    import time

    out = {}
    for name in ("float32", "bfloat16"):
        a = torch.randn(size, size).to(DTYPES[name])
        b = torch.randn(size, size).to(DTYPES[name])
        a @ b
        best, n, t0 = float("inf"), 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds or n < 3:
            t = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t)
            n += 1
        out[name] = 2.0 * size**3 / best / 1e9
    return out


# --------------------------------------------------------------------------- weights


def available_models() -> list[str]:
    """Model names open_clip can build (including ``ViT-B-32-control``, registered here)."""
    import open_clip

    from helpers import control

    control.register_model_config()
    return list(open_clip.list_models())


def model_for_weights(weights: str) -> str | None:
    """The model that named ``weights`` belong to (``"ViT-B-32-control"`` for the
    control weights), or None when ``weights`` fit any model (tags, files, random)."""
    from helpers import control

    return control.CONTROL_MODEL if control.weights_variant(str(weights)) else None


def _control_weights_file(name: str, weights: str) -> Path:
    """The committed file of control ``weights``, after checking ``name`` is their model."""
    from helpers import control

    if name != control.CONTROL_MODEL:
        raise ValueError(
            f"weights={weights!r} belong to model={control.CONTROL_MODEL!r}, but model={name!r} was given; "
            f"leave model unset (the weights name implies it) or pass model={control.CONTROL_MODEL!r}"
        )
    path = control.WEIGHTS[weights]
    if not path.is_file():
        raise ValueError(f"weights={weights!r}: file {path} is missing; `make control-models` trains it")
    return path


def _check_model_name(name: str) -> None:
    models = available_models()
    if name not in models:
        close = [m for m in models if name.lower().replace("/", "-") in m.lower()][:8]
        hint = f" Close matches: {close}." if close else ""
        raise ValueError(
            f"model={name!r} is not an open_clip model name.{hint} "
            "See helpers.models.available_models() (e.g. 'ViT-B-32', 'ViT-B-16', 'RN50')."
        )


def input_size(name: str) -> int:
    """Side in pixels of the square image input of open_clip model ``name`` (224 for ViT-B-32).

    Read from the model config, without building the model or loading weights.
    """
    import open_clip

    _check_model_name(name)
    size = (open_clip.get_model_config(name) or {}).get("vision_cfg", {}).get("image_size", 224)
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def is_checkpoint_path(weights: str) -> bool:
    """True when ``weights`` names a local checkpoint file rather than a tag."""
    return str(weights).lower().endswith(CHECKPOINT_SUFFIXES) or os.sep in str(weights)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub endpoint accepts a TCP connection.

    Name resolution and connection both run in a daemon thread that is given at
    most ``timeout`` seconds, so a black-holed network cannot stall the caller.
    ``HF_HUB_OFFLINE=1`` short-circuits to ``False``.
    """
    from huggingface_hub import constants as hf_constants

    if hf_constants.HF_HUB_OFFLINE:
        return False
    host = urlparse(hf_constants.ENDPOINT).hostname or "huggingface.co"
    result: list[bool] = [False]

    def probe() -> None:
        try:
            with socket.create_connection((host, 443), timeout=timeout):
                result[0] = True
        except OSError:
            result[0] = False

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return result[0]


def set_hub_offline() -> None:
    """Switch huggingface_hub to offline mode at run time (no retries, no waits).

    Setting ``os.environ`` after import is not enough: the flag is read into
    ``huggingface_hub.constants`` at import time, so both are set.
    """
    from huggingface_hub import constants as hf_constants

    os.environ["HF_HUB_OFFLINE"] = "1"
    hf_constants.HF_HUB_OFFLINE = True


def _cached_weight_files(cfg: Mapping, cache_dir: str | None) -> tuple[list[Path], list[str]]:
    """Find already-downloaded files for a pretrained config.

    Returns:
    found : list of Path — Cached files that open_clip would load offline.
    tried : list of str — Human-readable descriptions of every place that was looked at.
    """
    import huggingface_hub
    from huggingface_hub import constants as hf_constants

    found: list[Path] = []
    tried: list[str] = []
    hub = cfg.get("hf_hub", "")
    if hub:
        repo_id, filename = os.path.split(hub)
        filename = filename or "open_clip_pytorch_model.bin"
        candidates = [filename]
        if filename == "open_clip_pytorch_model.bin":
            candidates.insert(0, "open_clip_model.safetensors")
        elif filename.endswith((".bin", ".pth")):
            candidates.insert(0, filename.rsplit(".", 1)[0] + ".safetensors")
        hub_cache = cache_dir or hf_constants.HF_HUB_CACHE
        for fn in candidates:
            tried.append(f"Hugging Face hub cache {hub_cache}: {repo_id}/{fn}")
            hit = huggingface_hub.try_to_load_from_cache(repo_id, fn, cache_dir=hub_cache)
            if isinstance(hit, str) and os.path.isfile(hit):
                found.append(Path(hit))
    url = cfg.get("url", "")
    if url:
        url_cache = Path(cache_dir or os.path.expanduser("~/.cache/clip"))
        target = url_cache / os.path.basename(url)
        tried.append(f"URL cache {target}")
        if target.is_file():
            found.append(target)
    return found, tried


def _resolve_tag(name: str, tag: str) -> dict:
    import open_clip

    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise ValueError(
            f"weights={tag!r} is neither a pretrained tag of {name!r}, a checkpoint file "
            f"({', '.join(CHECKPOINT_SUFFIXES)}) nor 'random'. Tags for {name}: {tags}"
        )
    return dict(cfg)


def _default_quick_gelu(name: str, weights: str) -> bool:
    """QuickGELU when the weights were trained with it.

    For a tag, the tag's pretrained config decides. For ``random`` and local
    files, the model's ``openai`` tag decides, so the random control has exactly
    the architecture of the pretrained condition.
    """
    import open_clip

    if "quickgelu" in name.lower():
        return True
    tag = "openai" if (weights == RANDOM or is_checkpoint_path(weights)) else weights
    cfg = open_clip.get_pretrained_cfg(name, tag) or {}
    return bool(cfg.get("quick_gelu", False))


def check_weights_available(
    name: str, weights: str, *, cache_dir: str | None = None
) -> tuple[list[Path], list[str]]:
    """Check, without building the model, that ``weights`` can be had.

    For a pretrained tag the local caches are searched; when nothing is cached
    and the hub cannot be reached, huggingface_hub is put into offline mode and
    :class:`WeightsUnavailableError` is raised (in about a second). When the hub
    is unreachable but a cached copy exists, offline mode is switched on too, so
    the later load reads the cache without network retries.

    Returns:
    found : list of Path — Cached files (empty for ``random``, a local file, or a downloadable tag).
    tried : list of str — Where we looked.

    Raises:
    ValueError — Unknown model or tag, or a missing checkpoint file.
    WeightsUnavailableError — Offline and not cached.
    """
    _check_model_name(name)
    if weights == RANDOM:
        return [], []
    if model_for_weights(weights):
        path = _control_weights_file(name, weights)
        return [path], [str(path)]
    if is_checkpoint_path(weights):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ValueError(f"weights={weights!r} looks like a checkpoint path but no such file exists")
        return [path], [str(path)]
    cfg = _resolve_tag(name, weights)
    found, tried = _cached_weight_files(cfg, cache_dir)
    if not hub_reachable():
        set_hub_offline()
        if not found:
            raise WeightsUnavailableError(_unavailable_message(name, weights, tried))
    return found, tried


def load_model(
    name: str = "ViT-B-32",
    weights: str = "openai",
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = AUTO,
    seed: int = 0,
    quick_gelu: bool | None = None,
    cache_dir: str | None = None,
) -> LoadedModel:
    """Build an open_clip model with pretrained, local or random weights.

    ``weights``: a pretrained tag (default ``"openai"``), a ``.pt``/``.safetensors``
    path, ``"random"`` (open_clip's init, seeded by ``seed``) or
    ``"control-spatial"``/``"control-nonspatial"`` (``name="ViT-B-32-control"``).
    ``device``: ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``, ``"mps"``.
    ``dtype``: ``"auto"`` (bfloat16 where the device runs it natively, else float32;
    :func:`choose_dtype`), ``"float32"``, ``"bfloat16"`` or ``"float16"`` (parameters are cast);
    the choice and its reason are kept in ``extra`` and recorded by :func:`model_identity`.
    ``quick_gelu``: default what the weights were trained with (QuickGELU for
    OpenAI CLIP). Raises ValueError (unknown name, tag or path) or
    :class:`WeightsUnavailableError` (offline, not cached); never falls back to random.
    """
    import open_clip

    if not isinstance(name, str) or not name:
        raise ValueError(f"model must be a non-empty open_clip model name, got {name!r}")
    _check_model_name(name)
    if not isinstance(weights, str) or not weights:
        raise ValueError(f"weights must be a pretrained tag, a checkpoint path or 'random', got {weights!r}")
    check_int("seed", seed)
    dev = resolve_device(device)
    dt, dtype_reason = choose_dtype(dtype, dev)
    qg = _default_quick_gelu(name, weights) if quick_gelu is None else bool(quick_gelu)

    model, extra = _create(open_clip, name, weights, int(seed), qg, cache_dir)
    extra.update(dtype_requested=dtype if isinstance(dtype, str) else str(dtype).replace("torch.", ""),
                 dtype_reason=dtype_reason)
    model = model.to(device=dev, dtype=dt).eval()
    preprocess = open_clip.image_transform(
        model.visual.image_size,
        is_train=False,
        mean=getattr(model.visual, "image_mean", None),
        std=getattr(model.visual, "image_std", None),
    )
    tokenizer = open_clip.get_tokenizer(name)
    size = model.visual.image_size
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    return LoadedModel(
        model=model,
        preprocess=preprocess,
        tokenizer=tokenizer,
        name=name,
        weights=weights,
        seed=int(seed) if weights == RANDOM else None,
        device=dev,
        dtype=dt,
        input_size=size,
        quick_gelu=qg,
        extra=extra,
    )


def _create(open_clip, name: str, weights: str, seed: int, qg: bool, cache_dir: str | None):
    """The open_clip model for ``weights`` (random, checkpoint file, control or pretrained tag) and provenance extras."""
    extra: dict = {}
    if weights == RANDOM:
        torch.manual_seed(seed)
        with _quiet_root_logger():  # open_clip logs "initialized randomly" as a warning
            model = open_clip.create_model(name, pretrained=None, force_quick_gelu=qg)
    elif is_checkpoint_path(weights):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ValueError(f"weights={weights!r} looks like a checkpoint path but no such file exists")
        model = _create_from_file(open_clip, name, path, qg)
        extra["checkpoint"] = str(path.resolve())
    elif model_for_weights(weights):
        path = _control_weights_file(name, weights)
        model = open_clip.create_model(name, pretrained=str(path), force_quick_gelu=qg)
        extra["checkpoint"] = str(path.resolve())
    else:
        found, tried = check_weights_available(name, weights, cache_dir=cache_dir)
        try:
            model = open_clip.create_model(
                name, pretrained=weights, force_quick_gelu=qg, cache_dir=cache_dir, require_pretrained=True
            )
        except (RuntimeError, FileNotFoundError, OSError) as e:
            raise WeightsUnavailableError(_unavailable_message(name, weights, tried) + f"\nLast error: {e}") from e
        extra["cached_files"] = [str(p) for p in found]

    return model, extra


def _create_from_file(open_clip, name: str, path: Path, quick_gelu: bool):
    """Build ``name`` from a local checkpoint, loaded safely (``torch.load(weights_only=True)`` or safetensors).

    A file that is not a plain state_dict (arbitrary pickled objects, junk, a
    truncated file) is refused naming the file; torch's own message would
    suggest ``weights_only=False``, i.e. running the file's code.
    """
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch's pickle-protocol chatter
            return open_clip.create_model(name, pretrained=str(path), force_quick_gelu=quick_gelu)
    except RuntimeError as e:
        if "size mismatch" in str(e) or "Missing key" in str(e) or "Unexpected key" in str(e):
            raise ValueError(f"weights={str(path)!r} holds weights of another architecture than model={name!r}") from None
        raise ValueError(_unsafe_checkpoint_message(path, e)) from None
    except Exception as e:  # UnpicklingError, EOFError, IndexError, ... from a file that is no checkpoint
        raise ValueError(_unsafe_checkpoint_message(path, e)) from None


def _unsafe_checkpoint_message(path: Path, e: Exception) -> str:
    return (f"weights={str(path)!r} is not a safe checkpoint ({type(e).__name__}): expected a state_dict that "
            "torch.load(weights_only=True) can read, or a .safetensors file. It is not loaded any other way, "
            "because unpickling arbitrary objects can run code.")


@contextlib.contextmanager
def _quiet_root_logger():
    root = logging.getLogger()
    old = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(old)


def _unavailable_message(name: str, tag: str, tried: Sequence[str]) -> str:
    from huggingface_hub import constants as hf_constants

    lines = "\n".join(f"  - {t}" for t in tried) or "  - (no download source in the config)"
    return (
        f"Pretrained weights {name!r} / {tag!r} are not available: the model hub cannot be reached "
        f"and no cached copy was found.\nTried:\n{lines}\n"
        f"Cache: {hf_constants.HF_HUB_CACHE} (set HF_HUB_CACHE or cache_dir= to move it).\n"
        "Alternatives:\n"
        "  - download once on a machine with network, then copy the cache folder here;\n"
        "  - pass a local checkpoint: weights='/path/to/model.safetensors' (or .pt);\n"
        "  - run the random-weights control: weights='random' (e.g. `make study WEIGHTS=random`).\n"
        "Random weights are never substituted silently."
    )


def weights_hash(model: torch.nn.Module, n_hex: int = 16) -> str:
    """SHA-256 over the state dict (names, shapes, dtypes and bytes).

    Identifies the exact weights a result came from.
    """
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        t = v.detach().to("cpu").contiguous().reshape(-1)
        h.update(k.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:n_hex]


def model_identity(lm: LoadedModel) -> dict:
    """What exactly was run: name, weights, seed, activation, dtype, weights hash, versions.

    ``dtype`` is the compute dtype actually used; ``dtype_requested`` what was asked
    (e.g. ``"auto"``) and ``dtype_reason`` why that dtype (:func:`choose_dtype`).
    """
    import open_clip

    return {
        "model": lm.name,
        "weights": lm.weights,
        "seed": lm.seed,
        "quick_gelu": lm.quick_gelu,
        "dtype": str(lm.dtype).replace("torch.", ""),
        **{k: lm.extra[k] for k in ("dtype_requested", "dtype_reason") if k in lm.extra},
        "device": str(lm.device),
        "weights_hash": weights_hash(lm.model),
        "open_clip": open_clip.__version__,
        "torch": torch.__version__,
        **({"checkpoint": lm.extra["checkpoint"]} if "checkpoint" in lm.extra else {}),
    }


def check_identity(lm: LoadedModel, path) -> None:
    """Refuse ``lm`` unless its weights hash (covering the dtype) equals the one stored at ``path`` (01's ``Run.model``)."""
    import json

    stored = json.loads(Path(path).read_text()).get("weights_hash")
    got = weights_hash(lm.model)
    if stored != got:
        raise ValueError(
            f"weights: {lm.label} has weights hash {got}, but {path} (stage 01) records {stored}; "
            "the run was designed with other weights or another dtype: rerun from stage 01"
        )


# --------------------------------------------------------------------------- zero-shot


@torch.no_grad()
def encode_prompts(lm: LoadedModel, prompts: Sequence[str]) -> torch.Tensor:
    """L2-normalised text embeddings, shape (n_prompts, embed_dim), float32."""
    if isinstance(prompts, str) or len(prompts) == 0:
        raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r}")
    tokens = lm.tokenizer(list(prompts)).to(lm.device)
    return lm.model.encode_text(tokens, normalize=True).float()


@torch.no_grad()
def encode_images(lm: LoadedModel, images: torch.Tensor) -> torch.Tensor:
    """L2-normalised image embeddings, shape (batch, embed_dim), float32.

    ``images`` are preprocessed tensors (batch, 3, S, S); they are moved to the
    model's device and dtype.
    """
    x = images.to(device=lm.device, dtype=lm.dtype)
    return lm.model.encode_image(x, normalize=True).float()


def logit_scale(lm: LoadedModel) -> float:
    """The learned temperature ``exp(logit_scale)`` (100 for OpenAI CLIP)."""
    return float(lm.model.logit_scale.detach().float().exp().cpu())


def zero_shot_probs(image_features: torch.Tensor, text_features: torch.Tensor, scale: float) -> torch.Tensor:
    """Softmax over prompts of ``scale * cos(image, text)``.

    Parameters:
    image_features : (n, d) tensor, L2-normalised
    text_features : (p, d) tensor, L2-normalised
    scale : float — ``exp(logit_scale)``.

    Returns:
    (n, p) tensor of probabilities; rows sum to 1.
    """
    if image_features.shape[-1] != text_features.shape[-1]:
        raise ValueError(
            f"embedding sizes differ: images {tuple(image_features.shape)}, prompts {tuple(text_features.shape)}"
        )
    logits = scale * image_features.float() @ text_features.float().T
    return logits.softmax(dim=-1)


def embed_stimuli(lm: LoadedModel, batches: Iterable, *, progress: bool = True, total: int | None = None) -> np.ndarray:
    """Image embeddings for every stimulus, in stimulus order.

    Parameters:
    batches : iterable of (images, indices) — As yielded by :func:`helpers.stimuli.iter_batches`.

    Returns:
    (n, embed_dim) float32 array, L2-normalised rows.
    """
    from tqdm.auto import tqdm

    chunks: list[tuple[np.ndarray, np.ndarray]] = []
    with tqdm(total=total, desc="embed", unit="img", disable=not progress) as bar:
        for images, idx in batches:
            chunks.append((np.asarray(idx), encode_images(lm, images).cpu().numpy()))
            bar.update(len(idx))
    idx = np.concatenate([c[0] for c in chunks])
    feats = np.concatenate([c[1] for c in chunks])
    out = np.empty_like(feats)
    out[idx] = feats
    return out


def classify(
    lm: LoadedModel, image_features: np.ndarray | torch.Tensor, prompt_set: Mapping[str, str]
) -> np.ndarray:
    """Zero-shot probabilities for one prompt set.

    Parameters:
    image_features : (n, d) L2-normalised image embeddings.
    prompt_set : mapping label -> prompt text (e.g. ``PROMPT_SETS["+ colour"]``).

    Returns:
    (n, len(prompt_set)) float array of probabilities, columns in the mapping's order.
    """
    text = encode_prompts(lm, list(prompt_set.values()))
    feats = torch.as_tensor(np.asarray(image_features), dtype=torch.float32, device=text.device)
    return zero_shot_probs(feats, text, logit_scale(lm)).cpu().numpy()


def assignment_table(
    probs: np.ndarray,
    labels: Sequence[str],
    positions: np.ndarray,
    *,
    grid: int = 4,
    extent: tuple[float, float, float, float],
) -> dict[str, tuple[float, float]]:
    """Fraction of stimuli assigned (argmax) to each label, mean +- SD over locations.

    The stimuli are split into a coarse ``grid x grid`` tiling of the visual
    field; in each non-empty cell the fraction of stimuli whose most probable
    prompt is each label is computed; the table reports the mean and the SD
    (``ddof=0``) of those per-cell fractions. Means sum to 1 over labels.

    Returns:
    dict label -> (mean, sd)
    """
    probs = np.asarray(probs)
    if probs.ndim != 2 or probs.shape[1] != len(labels):
        raise ValueError(f"probs must be (n, {len(labels)}), got {probs.shape}")
    choice = probs.argmax(axis=1)
    cells = np.zeros(len(probs), int) if int(grid) == 1 else flat_bin_indices(positions, grid, extent)  # row-major
    if (cells < 0).any():
        raise ValueError(f"{int((cells < 0).sum())} positions lie outside extent={extent}")
    counts = np.zeros((grid * grid, len(labels)))
    np.add.at(counts, (cells, choice), 1.0)
    n_cell = counts.sum(axis=1)
    frac = counts[n_cell > 0] / n_cell[n_cell > 0, None]
    return {lab: (float(frac[:, j].mean()), float(frac[:, j].std())) for j, lab in enumerate(labels)}


def zero_shot_table(
    lm: LoadedModel,
    image_features: np.ndarray,
    positions: np.ndarray,
    *,
    prompt_sets: Mapping[str, Mapping[str, str]] = PROMPT_SETS,
    grid: int = 4,
    extent: tuple[float, float, float, float],
):
    """The blog's classification table: one row per prompt set.

    Returns:
    pandas.DataFrame — Index: prompt set. Columns: ``<label>_mean`` and ``<label>_sd`` for every label of any set (NaN
        where a set lacks the label).
    """
    import pandas as pd

    rows = {}
    for set_name, ps in prompt_sets.items():
        probs = classify(lm, image_features, ps)
        tab = assignment_table(probs, list(ps), positions, grid=grid, extent=extent)
        row = {}
        for lab, (m, s) in tab.items():
            row[f"{lab}_mean"] = m
            row[f"{lab}_sd"] = s
        rows[set_name] = row
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index.name = "prompts"
    return df


def format_table(df) -> "pandas.DataFrame":
    """``mean ± sd`` strings per label, ``-`` where a prompt set lacks the label."""
    import pandas as pd

    labels = [c[: -len("_mean")] for c in df.columns if c.endswith("_mean")]
    out = pd.DataFrame(index=df.index)
    for lab in labels:
        m, s = df[f"{lab}_mean"], df[f"{lab}_sd"]
        out[lab.capitalize()] = [
            "-" if np.isnan(a) else f"{a:.2f} ± {b:.2f}" for a, b in zip(m, s)
        ]
    return out
