"""Exponential backoff with jitter, on tenacity: the one retry helper of the bus.

:class:`Backoff` holds the curve; :meth:`Backoff.retrying` turns it into a
``tenacity.AsyncRetrying`` that retries chosen exceptions (forever, for a while or a number of
times) and logs each retry; :meth:`Backoff.delay` is the same curve for one attempt number, for
callers that schedule the wait themselves (a RETRY outcome is redelivered by the broker, not
slept on).  Nothing here is specific to a backend, so the app channel of ``runtime`` can use it
too::

    retrying = Backoff(initial=0.1, maximum=5.0).retrying(
        "connecting to the app", on=(OSError,), give_up_after=60.0, logger=log
    )
    await retrying(connect)
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import tenacity

from bus.errors import InvalidArgument

_log = logging.getLogger("omnibus.bus")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Waits of ``initial * multiplier ** (n - 1)`` plus up to ``jitter`` s, at most ``maximum``."""

    initial: float = 0.05
    maximum: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        for name in ("initial", "maximum", "jitter"):
            if getattr(self, name) < 0:
                raise InvalidArgument(f"backoff {name} must not be negative")
        if self.multiplier < 1:
            raise InvalidArgument("backoff multiplier must be >= 1")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after the failed attempt numbered ``attempt`` (from 1)."""
        try:
            grown = self.initial * self.multiplier ** max(0, attempt - 1)
        except OverflowError:
            grown = self.maximum
        return max(0.0, min(grown + random.uniform(0, self.jitter), self.maximum))

    def wait(self) -> tenacity.wait.wait_base:
        """This curve as a tenacity wait strategy (the formula of :meth:`delay`)."""
        return tenacity.wait_exponential_jitter(
            multiplier=self.initial, max=self.maximum, exp_base=self.multiplier, jitter=self.jitter
        )

    def retrying(
        self,
        what: str,
        *,
        on: type[BaseException] | tuple[type[BaseException], ...],
        give_up_after: float | None = None,
        attempts: int | None = None,
        logger: logging.Logger = _log,
    ) -> tenacity.AsyncRetrying:
        """Retry ``on`` errors along this curve; the last error is re-raised when it gives up.

        Without ``give_up_after`` (seconds) or ``attempts`` it retries forever.  Each retry logs
        a warning naming ``what`` and the try.
        """

        def warn(state: tenacity.RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome is not None else None
            logger.warning("%s failed (try %d: %s); retrying", what, state.attempt_number, error)

        stop: tenacity.stop.stop_base = tenacity.stop_never
        if give_up_after is not None:
            stop = tenacity.stop_after_delay(give_up_after)
        if attempts is not None:
            stop = stop | tenacity.stop_after_attempt(attempts)
        return tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception_type(on),
            wait=self.wait(),
            stop=stop,
            before_sleep=warn,
            reraise=True,
        )
