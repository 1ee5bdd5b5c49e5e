"""Process coordination for a run under ``accelerate launch``: who is process 0, and what it tells the others.

Process 0 does the work every process depends on (locking and checking the output folder, the
identity plan) through :func:`on_main`; the others receive its result, or its error, by broadcast.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from synthface.errors import SynthfaceError


def process_state() -> Any:
    """accelerate's PartialState: rank, world size, device; CPU processes get the gloo backend.

    ``accelerate launch --multi_gpu``/``torchrun`` on a machine without GPUs would otherwise leave
    every process believing it is alone (process 0 of 1).
    """
    import torch
    from accelerate import PartialState

    distributed = int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 or int(os.environ.get("LOCAL_RANK", "-1") or -1) >= 0
    flag = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    return PartialState(cpu=flag or (distributed and not torch.cuda.is_available()))


def on_main(state: Any, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on process 0 and hand its result (or its error) to every process."""
    result, error = None, None
    if state.is_main_process:
        try:
            result = fn()
        except SynthfaceError as exc:
            error = exc
        except BaseException as exc:
            if state.num_processes > 1:
                broadcast(state, [None, SynthfaceError(f"process 0 failed: {type(exc).__name__}: {exc}")])
            raise
    if state.num_processes > 1:
        result, error = broadcast(state, [result, error])
    if error is not None:
        raise error
    return result


def broadcast(state: Any, box: list[Any]) -> list[Any]:
    from accelerate.utils import broadcast_object_list

    return list(broadcast_object_list(box, from_process=0))


def gather(state: Any, obj: Any) -> list[Any]:
    if state.num_processes == 1:
        return [obj]
    from accelerate.utils import gather_object

    return list(gather_object([obj]))
