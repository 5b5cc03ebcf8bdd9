"""Forward hooks addressed by open_clip module name: read or edit outputs, read inputs.

Every hook lives inside a context manager and is removed on exit, also when the
body or the hook raises. A module returning a tuple (``nn.MultiheadAttention``
returns ``(output, weights)``) is read and edited through its first element,
here and nowhere else. Only batch-first transformers (open_clip >= 2.24) are
supported; :func:`require_batch_first` refuses the others.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

#: ``fn(name, tensor)`` called by a hook; an edit hook's non-None return replaces the output.
HookFn = Callable[[str, torch.Tensor], "torch.Tensor | None"]


class SequenceFirstError(ValueError):
    """The model runs a transformer sequence-first (T, B, D); only batch-first is supported."""


def require_batch_first(model: nn.Module) -> nn.Module:
    """Refuse a model with a sequence-first transformer or attention module; return the model."""
    for name, m in model.named_modules():
        seq = (hasattr(m, "resblocks") and getattr(m, "batch_first", True) is False) or (
            isinstance(m, nn.MultiheadAttention) and not m.batch_first
        )
        if seq:
            raise SequenceFirstError(
                f"{name or 'model'} runs sequence-first (batch_first=False); only batch-first open_clip "
                "transformers (open_clip >= 2.24) are supported"
            )
    return model


def named(model: nn.Module, names: str | Sequence[str]) -> dict[str, nn.Module]:
    """``{name: module}`` for exact ``named_modules()`` names (``""`` is the model itself)."""
    names = [names] if isinstance(names, str) else list(names)
    return {n: model.get_submodule(n) for n in names}


def main_output(output, name: str = "module") -> torch.Tensor:
    """The tensor a hook reads: ``output``, or ``output[0]`` of a tuple such as ``(attn_out, weights)``."""
    out = output[0] if isinstance(output, tuple) and output else output
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{name} returned {type(output).__name__}, not a tensor or a tuple led by a tensor")
    return out


def _replace(output, new: torch.Tensor):
    return (new, *output[1:]) if isinstance(output, tuple) else new


@contextlib.contextmanager
def _registered(register: Callable[[], list]) -> Iterator[None]:
    handles: list = []
    try:
        handles.extend(register())
        yield
    finally:
        for h in handles:
            h.remove()


def _each(modules: Mapping[str, nn.Module], make) -> Callable[[], list]:
    def register() -> list:
        out = []
        try:
            for name, mod in modules.items():
                out.append(make(name, mod))
        except BaseException:
            for h in out:
                h.remove()
            raise
        return out

    return register


@contextlib.contextmanager
def edit_outputs(modules: Mapping[str, nn.Module], fn: HookFn) -> Iterator[None]:
    """Call ``fn(name, output)`` after each module's forward; a tensor it returns replaces the output."""

    def make(name, mod):
        def hook(module, args, output):
            new = fn(name, main_output(output, name))
            return None if new is None else _replace(output, new)

        return mod.register_forward_hook(hook)

    with _registered(_each(modules, make)):
        yield


@contextlib.contextmanager
def read_inputs(modules: Mapping[str, nn.Module], fn: Callable[[str, torch.Tensor], None]) -> Iterator[None]:
    """Call ``fn(name, x)`` before each module's forward, ``x`` its first (positional or keyword) input."""

    def make(name, mod):
        def pre_hook(module, args, kwargs):
            fn(name, args[0] if args else next(iter(kwargs.values())))

        return mod.register_forward_pre_hook(pre_hook, with_kwargs=True, prepend=True)

    with _registered(_each(modules, make)):
        yield


class Trace:
    """Keep the detached output of named modules from the most recent forward.

    ``with Trace(model, names) as tr: model(x)``; then ``tr.outputs[name]`` is a
    tensor (the first element of a tuple output) and ``tr.calls[name]`` how
    often the module ran. Hooks are removed on exit, also on error.
    """

    def __init__(self, model: nn.Module, names: str | Sequence[str]):
        self.modules = named(require_batch_first(model), names)
        self.outputs: dict[str, torch.Tensor] = {}
        self.calls: dict[str, int] = {n: 0 for n in self.modules}
        self._ctx = None

    def _store(self, name: str, out: torch.Tensor) -> None:
        self.outputs[name] = out.detach()
        self.calls[name] += 1

    def __enter__(self) -> "Trace":
        self._ctx = edit_outputs(self.modules, self._store)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc) -> bool:
        self._ctx.__exit__(None, None, None)
        return False


def mask_output(module: nn.Module, mask: torch.Tensor, value: float = 0.0):
    """Context manager: ``output.masked_fill(mask, value)`` for ``module`` (mask broadcast to the output)."""
    return edit_outputs({"": module}, lambda name, out: out.masked_fill(mask.to(out.device), value))
