"""ZeroGPU support without a hard dependency: `gpu_task` is ``spaces.GPU`` on a Hugging Face Space
that has the ``spaces`` package, and does nothing anywhere else. Nothing here touches CUDA."""

from __future__ import annotations

from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)


def gpu_task(duration: int) -> Callable[[F], F]:
    """Decorate a function that needs the GPU for up to `duration` seconds."""
    try:
        import spaces  # type: ignore[import-not-found]
    except ImportError:
        return lambda function: function
    return spaces.GPU(duration=duration)
