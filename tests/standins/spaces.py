"""A stand-in for Hugging Face's ``spaces`` package that enforces ZeroGPU's rules, so the app's
ZeroGPU runner is tested against them on a CPU machine (put this folder on ``sys.path``).

The rules it enforces, as ZeroGPU applies them:
- a ``@spaces.GPU(duration=...)`` call runs in a forked child, so nothing it leaves in memory
  reaches the next call; its return value and exceptions travel back to the caller;
- a call that runs past its duration is killed and fails with "GPU task aborted";
- a call is refused when the visitor's quota is smaller than the duration it asks for, with
  ZeroGPU's "You have exceeded your GPU quota" message; the time a call used is taken off it;
- CUDA must not be initialised in the parent process: it fails here at once.

`calls` records each call (duration asked, seconds used, outcome) for the tests to read.
"""

from __future__ import annotations

import functools
import multiprocessing
import time
import traceback
from typing import Any, Callable

import gradio as gr
import torch

calls: list[dict[str, Any]] = []
quota_s: float | None = None  # the visitor's GPU seconds left; None: unlimited
_real_lazy_init = torch.cuda._lazy_init


def _refuse_cuda() -> None:
    raise RuntimeError("CUDA was initialised outside a @spaces.GPU call (ZeroGPU forbids it in the main process)")


torch.cuda._lazy_init = _refuse_cuda


def GPU(function: Callable | None = None, *, duration: float = 60) -> Callable:  # noqa: N802 - the real name
    """``@spaces.GPU`` or ``@spaces.GPU(duration=N)``."""

    def decorate(target: Callable) -> Callable:
        @functools.wraps(target)
        def call(*args: Any, **kwargs: Any) -> Any:
            global quota_s
            if quota_s is not None and quota_s < duration:
                calls.append({"duration": duration, "seconds": 0.0, "outcome": "quota"})
                raise gr.Error(
                    f"You have exceeded your GPU quota ({quota_s:.0f}s left vs. {duration:.0f}s requested). "
                    "Please retry in 0:05:00"
                )
            context = multiprocessing.get_context("fork")
            receive, send = context.Pipe(duplex=False)
            child = context.Process(target=_run_child, args=(send, target, args, kwargs), daemon=True)
            started = time.monotonic()
            child.start()
            send.close()
            finished = receive.poll(duration)
            seconds = time.monotonic() - started
            if quota_s is not None:
                quota_s = max(0.0, quota_s - seconds)
            if not finished:
                child.kill()
                child.join()
                calls.append({"duration": duration, "seconds": seconds, "outcome": "aborted"})
                raise gr.Error("GPU task aborted")
            kind, value = receive.recv()
            child.join()
            calls.append({"duration": duration, "seconds": seconds, "outcome": kind})
            if kind == "error":
                raise value
            return value

        return call

    return decorate(function) if function is not None else decorate


def _run_child(send: Any, target: Callable, args: tuple, kwargs: dict) -> None:
    torch.cuda._lazy_init = _real_lazy_init  # the child is where ZeroGPU lends the GPU
    try:
        send.send(("ok", target(*args, **kwargs)))
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the caller, as ZeroGPU does
        try:
            send.send(("error", exc))
        except Exception:  # noqa: BLE001 - an exception that cannot be pickled goes back as text
            send.send(("error", RuntimeError("".join(traceback.format_exception(exc)))))
