"""
Errbacks that log.

C{Logger.failure} takes its format first, so it cannot be passed to
C{addErrback} as it is; these build the errback.  Expected outages (Redis
or the database away) are warnings with the error's message; anything
else is a bug and is logged with its traceback.  Log events carry their
values as fields (C{userId}, C{peer}, ...), never only formatted text.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.logger import Logger
from twisted.python.failure import Failure

from chat.core.errors import Unavailable


def logFailure(log: Logger, format: str,
               **kwargs: Any) -> Callable[[Failure], None]:
    """
    An errback that logs C{format} (which may use C{{error}}) and consumes
    the failure: a warning for an outage, a critical with the traceback
    for anything unexpected.
    """
    def errback(failure: Failure) -> None:
        if failure.check(Unavailable, ConnectionError, OSError) or \
                type(failure.value).__module__ == "txredisapi":
            log.warn(format + ": {error}", error=failure.value, **kwargs)
        else:
            log.failure(format, failure, **kwargs)

    return errback
