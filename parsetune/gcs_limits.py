"""How long a gs:// call may take: ``PARSETUNE_GCS_TIMEOUT`` seconds (default 60) for the request
and its retries together, so an endpoint that accepts connections and never answers is a one-line
error in bounded time, not minutes of the client's retries."""

from __future__ import annotations

import os

from parsetune.errors import UserError

TIMEOUT_ENV = "PARSETUNE_GCS_TIMEOUT"
DEFAULT_TIMEOUT_S = 60.0
CONNECT_TIMEOUT_S = 10.0  # at most, to open a TCP connection to the endpoint


def timeout_s() -> float:
    """The time budget of one gs:// call, in seconds: ``PARSETUNE_GCS_TIMEOUT`` or 60."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise UserError(f"{TIMEOUT_ENV}={raw!r}: expected a positive number of seconds")
    return value


def bounded(conditional: bool = False) -> dict:
    """``timeout`` and ``retry`` keyword arguments that bound a google-cloud-storage call by :func:`timeout_s`.

    The retry policy stays the library's own: ``conditional`` (for copies) retries only a call that
    carries a generation precondition.
    """
    from google.cloud.storage.retry import DEFAULT_RETRY, ConditionalRetryPolicy, is_generation_specified

    budget = timeout_s()
    retry = DEFAULT_RETRY.with_timeout(budget)
    if conditional:
        retry = ConditionalRetryPolicy(retry, is_generation_specified, ["query_params"])
    return {"timeout": budget, "retry": retry}


def timed_out(err: BaseException | None) -> bool:
    """Whether ``err`` (or what it wraps) is a timeout: a request unanswered, or the retries' budget spent."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        name = type(err).__name__.lower()
        if "timeout" in name or "timed out" in str(err).lower() or name == "retryerror":
            return True
        err = err.__cause__ or err.__context__ or getattr(err, "cause", None)
    return False
