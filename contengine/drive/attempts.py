"""One attempt of a step: a time limit in a helper thread, and telling a bad call apart."""

from __future__ import annotations

import contextvars
import inspect
import threading
from collections.abc import Callable
from typing import Any

from ..core.requests import StepCall
from ..errors import Timeout


def bad_call(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], exc: Any
) -> bool:
    """Whether a TypeError means the step cannot take these arguments at all.

    Such an attempt fails on the arguments alone: retrying cannot help. Checked
    only after a TypeError, so the per-step path pays nothing for it.
    """
    if not isinstance(exc, TypeError):
        return False
    try:
        inspect.signature(fn).bind(*args, **kwargs)
    except TypeError:
        return True
    except ValueError:  # no signature to check (some builtins)
        return False
    return False


def call_with_timeout(
    request: StepCall[Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    timeout: float,
    attempt: int,
) -> Any:
    """Run the step in a helper thread and stop waiting for it after timeout seconds.

    Python cannot kill a thread: a timed-out attempt keeps running in the
    background and its result is ignored. The attempt counts as failed with
    ce.Timeout, which retries like any other exception.
    """

    box: list[Any] = []
    ctx = contextvars.copy_context()

    def target() -> None:
        try:
            box.append((True, ctx.run(request.step.fn, *args, **kwargs)))
        except BaseException as exc:  # handed to the waiting thread below
            box.append((False, exc))

    thread = threading.Thread(target=target, name=f"contengine-step-{request.name}", daemon=True)
    thread.start()
    thread.join(timeout)
    if not box:
        raise Timeout(
            f"step {request.name!r} attempt {attempt} did not finish within {timeout:g} s"
        )
    ok, value = box[0]
    if ok:
        return value
    raise value
