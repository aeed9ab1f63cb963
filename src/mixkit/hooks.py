"""Feature-level mixing through forward hooks, with no change to the model's code.

:func:`mix_features` resolves a submodule by name, replaces its output by ``fn(output)``
during one forward pass, and removes itself. The name ``"input"`` stands for the model's
input (a forward pre-hook on the model). Every feature-level method reuses this.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn

from mixkit.errors import ModelError, suggest

__all__ = ["INPUT", "resolve_layer", "mix_features"]

#: The layer name that means "the model's input".
INPUT = "input"


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` (dotted path), with a helpful error if there is none.

    A ``DistributedDataParallel`` (or ``DataParallel``) wrapper is looked through, so names
    are those of the user's own model.
    """
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        raise ModelError(
            f"model {type(model).__name__} has no submodule {name!r}.{suggest(name, names)} "
            f"Names it has (use {INPUT!r} for the input): {', '.join(names[:40])}"
            + (" ..." if len(names) > 40 else "")
        ) from None


def _replace_output(fn: Callable[[Tensor], Tensor], layer: str, calls: list[int]) -> Callable[..., Any]:
    def hook(module: nn.Module, args: Any, output: Any) -> Tensor:
        calls[0] += 1
        if calls[0] > 1:
            raise ModelError(
                f"layer {layer!r} ran more than once in one forward pass (a shared module?); "
                "name a module that runs once, such as a whole stage"
            )
        if not isinstance(output, Tensor):
            raise ModelError(f"layer {layer!r} returned {type(output).__name__}, not a tensor; name another layer")
        return fn(output)

    return hook


def _replace_input(fn: Callable[[Tensor], Tensor], calls: list[int]) -> Callable[..., Any]:
    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        calls[0] += 1
        if calls[0] > 1:
            raise ModelError("the model ran more than once inside one mix_features block")
        if not args or not isinstance(args[0], Tensor):
            raise ModelError("mixing at 'input' needs the batch as the model's first positional argument")
        return (fn(args[0]),) + tuple(args[1:]), kwargs

    return hook


@contextmanager
def mix_features(model: nn.Module, layer: str, fn: Callable[[Tensor], Tensor]) -> Iterator[None]:
    """Within the block, the output of ``layer`` (or the input) is replaced by ``fn(output)``.

    Args:
        model: any ``nn.Module``; it is not modified beyond a temporary hook.
        layer: dotted submodule name, or ``"input"``.
        fn: what to do with the tensor, e.g. a blend with a partner row.

    Raises:
        ModelError: the layer does not exist, ran more than once, returned a non-tensor, or
            did not run at all in the block.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())
        >>> with mix_features(net, "0", lambda h: torch.full_like(h, -1.0)):
        ...     out = net(torch.ones(1, 2))
        >>> out.tolist()  # the ReLU saw the replaced output
        [[0.0, 0.0]]
    """
    calls = [0]
    if layer == INPUT:
        handle = model.register_forward_pre_hook(_replace_input(fn, calls), with_kwargs=True)
    else:
        handle = resolve_layer(model, layer).register_forward_hook(_replace_output(fn, layer, calls))
    try:
        yield
    finally:
        handle.remove()
    if calls[0] == 0:
        raise ModelError(f"layer {layer!r} did not run inside the mix_features block; run the model inside it")
