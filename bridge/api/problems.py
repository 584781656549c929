"""RFC 9457 problem details: the one shape of every API error, and reading JSON request bodies.

Every answer that is not a success is ``application/problem+json`` with ``type``, ``title``,
``status`` and ``detail``; a validation problem adds ``errors``, one ``{field, in, reason,
detail}`` per wrong field (``field`` a dotted path such as ``events[0]``, ``in`` one of
``body``, ``query``, ``header``, ``path``). Bad input is always a ``4xx``: the middleware turns
aiohttp's own refusals (unknown route, wrong method, body too large) into problems too, and only
a bug in the bridge answers ``500``, without any detail.

Problem details never quote what the client sent: request bodies hold webhook secrets.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from aiokafka.errors import KafkaError
from prometheus_client import Gauge

from bridge.contract import jsoncanon
from bridge.errors import InvalidRecord

__all__ = [
    "PROBLEM_JSON",
    "PROBLEM_TYPE_PREFIX",
    "PROBLEM_TITLES",
    "DEFAULT_MAX_BODY_BYTES",
    "FieldError",
    "Problem",
    "problem_response",
    "read_body",
    "read_json",
    "read_json_object",
    "UNWIND_GRACE",
    "MAX_UNWINDING",
    "REFUSED_RETRY_AFTER",
    "PROBE_PATHS",
    "Unwinding",
    "problem_middleware",
    "route_template",
]

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

#: ``type`` of every problem is this prefix and a slug of :data:`PROBLEM_TITLES` (a tag URI,
#: RFC 4151: a stable identifier that names no server; docs/api.md lists them).
PROBLEM_TYPE_PREFIX = "tag:webhook-bridge,2026:problem:"

#: Slug -> (status, title) of every problem the API answers.
PROBLEM_TITLES: Mapping[str, tuple[int, str]] = {
    "validation_failed": (400, "The request has invalid fields"),
    "malformed_json": (400, "The request body is not valid JSON"),
    "unauthorized": (401, "Authentication required"),
    "forbidden": (403, "Not allowed"),
    "not_found": (404, "Not found"),
    "method_not_allowed": (405, "Method not allowed"),
    "conflict": (409, "Conflict with the current state"),
    "precondition_failed": (412, "The resource changed (If-Match does not match its ETag)"),
    "body_too_large": (413, "The request body is too large"),
    "unsupported_media_type": (415, "The request body must be application/json"),
    "idempotency_key_reused": (422, "The Idempotency-Key was used with another request"),
    "too_many_requests": (429, "Too many requests; retry after Retry-After seconds"),
    "timeout": (503, "The request took too long"),
    "unavailable": (503, "Temporarily unavailable; retry after Retry-After seconds"),
    "internal_error": (500, "Internal error"),
}

#: The largest request body accepted; a larger one is answered ``413``. The largest valid body
#: is a creation with every field at its longest (a URL of 2,048 characters, a name of 500, an
#: id, site_id and user_id of 200, a secret of 256, every event type): 3,681 bytes in ASCII,
#: 12,501 in UTF-8 when every character of them takes 4 bytes, and 15,781 with those of all but
#: the URL written as escaped surrogate pairs (``\ud83d\ude00``, as Python's ``json.dumps``
#: writes them); the other routes' bodies are smaller (a replay's with its longest cursor,
#: ASCII, under 10 KB however its ids are written). Only a body whose URL too is written so is
#: larger (up to 36 KB): it fits sent as UTF-8. Every byte accepted is parsed and validated on
#: the event loop of a worker that also delivers: until 2026-12-05 the limit was 1 MiB, whose
#: numbers alone took 130 ms to parse, and until 2026-12-07 64 KiB, an invalid one of which
#: took 15 to 70 ms (measured 2026-12-07: parsed, checked for unsafe integers by encoding it
#: again, and validated).
DEFAULT_MAX_BODY_BYTES = 16 * 1024


@dataclass(frozen=True, slots=True)
class FieldError:
    """One wrong field of a request."""

    #: Dotted path of the field (``url``, ``events[0]``, a query parameter or header name);
    #: empty for the body as a whole.
    field: str
    #: Machine-readable cause, snake_case (``required``, ``type``, ``unknown_field``,
    #: ``invalid_url``...).
    reason: str
    #: What is wrong, for people; never quotes the value.
    detail: str
    #: Where the field is: ``body``, ``query``, ``header`` or ``path``.
    location: str = "body"

    def to_dict(self) -> dict[str, str]:
        return {
            "field": self.field,
            "in": self.location,
            "reason": self.reason,
            "detail": self.detail,
        }


class Problem(Exception):
    """An API error: raised anywhere below a handler, answered as problem+json."""

    def __init__(
        self,
        slug: str,
        detail: str,
        *,
        errors: Iterable[FieldError] = (),
        headers: Mapping[str, str] | None = None,
        status: int | None = None,
    ) -> None:
        default_status, self.title = PROBLEM_TITLES[slug]
        super().__init__(f"{slug}: {detail}")
        self.slug = slug
        self.status = status or default_status
        self.detail = detail
        self.errors = tuple(errors)
        self.headers = dict(headers or {})

    @classmethod
    def invalid(cls, *errors: FieldError) -> Problem:
        """A ``400 validation_failed`` naming the fields."""
        fields = ", ".join(sorted({e.field or "(body)" for e in errors}))
        return cls("validation_failed", f"invalid: {fields}", errors=errors)

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": PROBLEM_TYPE_PREFIX + self.slug,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.errors:
            body["errors"] = [e.to_dict() for e in self.errors]
        return body


def problem_response(problem: Problem) -> web.Response:
    """The problem+json response of ``problem``."""
    return web.Response(
        status=problem.status,
        body=jsoncanon.dumps(problem.to_dict()),
        content_type=PROBLEM_JSON,
        headers=problem.headers,
    )


#: Where :func:`read_body` keeps a body it read, for whoever reads it next.
_BODY_KEY = web.RequestKey("bridge.api.body", bytes)


def _too_large(max_bytes: int) -> Problem:
    # Made where it is raised, never kept in the raising frame: its traceback holds that frame,
    # and a problem the frame held too was a reference cycle (until 2026-12-07).
    return Problem("body_too_large", f"the body may hold at most {max_bytes} bytes")


async def read_body(request: web.Request, *, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> bytes:
    """The request body, at most ``max_bytes`` (``413 body_too_large`` otherwise, judged from
    ``Content-Length`` before reading and while reading a chunked body); ``415`` for a body
    with a ``Content-Encoding`` (gzip, ...): the API takes bodies as they are. Read once: a
    second call (a middleware, then the route) gets the same bytes."""
    kept = request.get(_BODY_KEY)
    if isinstance(kept, bytes):
        return kept
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding != "identity":
        raise Problem(
            "unsupported_media_type",
            "send the body without a Content-Encoding",
            errors=[FieldError("Content-Encoding", "encoding", "not identity", "header")],
        )
    if request.content_length is not None and request.content_length > max_bytes:
        raise _too_large(max_bytes)
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(65536)
        if not chunk:
            break
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
        chunks.append(chunk)
    body = b"".join(chunks)
    request[_BODY_KEY] = body
    return body


#: Where :func:`read_json` keeps what it read of a body: the value, or the detail of the
#: ``malformed_json`` refusing it (not the problem itself: an exception kept and raised again
#: would keep every frame it passed through).
_JSON_KEY = web.RequestKey("bridge.api.json", tuple)


async def read_json(request: web.Request, *, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> object:
    """The request body read as strict JSON (:func:`read_body`, then
    :func:`~bridge.contract.jsoncanon.loads_encodable`), or ``400 malformed_json`` for bytes
    that are not (invalid UTF-8, lone surrogates, ``NaN``, numbers no double holds, integers
    beyond 2^53 - 1, which the topic's records cannot carry, or nesting deeper than 256).
    Read once: a second call (a middleware, then the route) gets the same value, or the same
    refusal, without parsing again (until 2026-12-07 a creation's body was parsed twice on a
    worker)."""
    kept = request.get(_JSON_KEY)
    if kept is None:
        body = await read_body(request, max_bytes=max_bytes)
        try:
            kept = (jsoncanon.loads_encodable(body), None)
        except InvalidRecord as exc:
            kept = (None, f"{exc.reason}: {exc.detail}")
        request[_JSON_KEY] = kept
    value, refused = kept
    if refused is not None:
        raise Problem("malformed_json", refused)
    return value


async def read_json_object(
    request: web.Request, *, max_bytes: int = DEFAULT_MAX_BODY_BYTES
) -> dict[str, Any]:
    """The request body as a JSON object, or a :class:`Problem`.

    ``415`` unless the body is ``application/json``; ``413`` when it is larger than
    ``max_bytes`` (judged from ``Content-Length`` before reading, and while reading a chunked
    body); ``400 malformed_json`` for bytes that are not strict JSON (:func:`read_json`);
    ``400 validation_failed`` when it is not an object.
    """
    media = request.content_type
    if media != "application/json" and not (
        media.startswith("application/") and media.endswith("+json")
    ):
        raise Problem(
            "unsupported_media_type",
            "send the body as application/json",
            errors=[FieldError("Content-Type", "media_type", "not JSON", "header")],
        )
    value = await read_json(request, max_bytes=max_bytes)
    if not isinstance(value, dict):
        raise Problem.invalid(FieldError("", "type", "the body must be a JSON object"))
    return value


_HTTP_SLUGS = {
    404: "not_found",
    405: "method_not_allowed",
    412: "precondition_failed",
    413: "body_too_large",
    415: "unsupported_media_type",
}


#: What an error aiohttp raises before a route answers says, never quoting the request.
_HTTP_DETAILS = {
    404: "no route matches this path",
    405: "this route does not take this method (see Allow)",
    413: "the request body is too large",
}


def route_template(request: web.Request) -> str | None:
    """The template of the route a request matched (``/v1/webhooks/{webhook_id}``), or
    ``None`` when it matched none (an unknown path, a method the path does not take)."""
    info = request.match_info
    resource = info.route.resource if info.http_exception is None else None
    return None if resource is None else resource.canonical


#: How long a handler cancelled at the request's timeout is waited for before the ``503`` is
#: answered (seconds): most end at once, and are done with (their locks released) before the
#: client learns of it; one that takes longer ends after the answer.
UNWIND_GRACE = 0.05


#: The most handlers answered at their timeout that may still run before the API refuses new
#: requests (``503 unavailable``), until they are down to half of it. A broker that answers
#: leaves none running past :data:`UNWIND_GRACE`; one that does not leaves each with the Kafka
#: client it waits on: started against it, ~22 KB and a socket per broker (measured
#: 2026-12-07). 64 of them are ~1.5 MB and, with three brokers, ~200 sockets: well within an API
#: worker's memory and a 1,024 open-file limit beside the worker's own connections. Fewer would
#: refuse a worker's ``/v1`` for a broker pausing a few seconds (a leader moving) under a few
#: requests a second, each running up to its client's start grace
#: (``bridge.kafka.clients.START_GRACE``, 5 s) past its timeout.
MAX_UNWINDING = 64

#: ``Retry-After`` (seconds) of a request refused while handlers unwind: they wait on a broker
#: that did not answer for a whole request timeout, which seldom answers within a second.
REFUSED_RETRY_AFTER = 5

#: Paths served beside the API on its port that are not API requests: the probes and the
#: scrape. Never refused while handlers unwind (an orchestrator probing a worker refusing
#: ``/v1`` must see it alive, and Prometheus the unwinding count).
PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class Unwinding:
    """The handlers answered at their timeout that still run (cancelled, stopping a Kafka
    client against a broker that does not answer), counted in ``gauge``, and whether new
    requests are refused for them: from when they are ``limit`` until they are down to half of
    it (a handler ending while the broker still hangs would free a place for one more to hang
    in; the refusal ends once the broker answers again, as it ends them). Reaching the limit
    and getting down from it are logged once each."""

    def __init__(self, limit: int = MAX_UNWINDING, gauge: Gauge | None = None) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._gauge = gauge
        self._tasks: set[asyncio.Task[web.StreamResponse]] = set()
        self._refusing = False
        #: Requests refused since the limit was reached (logged as the refusal ends).
        self._refused = 0

    def __len__(self) -> int:
        return len(self._tasks)

    @property
    def refusing(self) -> bool:
        """Whether new requests are refused."""
        return self._refusing

    def readiness(self) -> tuple[bool, str]:
        """``/readyz``'s view: not ready while refusing, so that the API's Service sends
        requests to the workers that answer them."""
        if not self._refusing:
            return True, ""
        return False, (
            f"{len(self._tasks)} API requests still unwinding after their timeout (waiting on "
            f"the broker, most likely): refusing /v1 until they are down to {self.limit // 2}"
        )

    def refused(self) -> None:
        """Count a request refused."""
        self._refused += 1

    def add(self, task: asyncio.Task[web.StreamResponse]) -> None:
        """Track ``task``, a handler answered at its timeout that still runs."""
        self._tasks.add(task)
        self._counted()
        if not self._refusing and len(self._tasks) >= self.limit:
            self._refusing = True
            self._refused = 0
            log.warning(
                "%d API requests are still unwinding after their timeout (waiting on the broker, "
                "most likely): refusing new ones (503) until they are down to %d",
                len(self._tasks),
                self.limit // 2,
            )

    def discard(self, task: asyncio.Task[web.StreamResponse]) -> None:
        """Forget ``task``, which ended."""
        self._tasks.discard(task)
        self._counted()
        if self._refusing and len(self._tasks) <= self.limit // 2:
            self._refusing = False
            log.warning(
                "API requests still unwinding are down to %d: answering again (%d refused "
                "meanwhile)",
                len(self._tasks),
                self._refused,
            )

    def _counted(self) -> None:
        if self._gauge is not None:
            self._gauge.set(len(self._tasks))


def problem_middleware(timeout: float, unwinding: Unwinding | None = None) -> Middleware:
    """Middleware answering every error as a problem and every request within ``timeout``.

    A handler that takes longer is cancelled and answered ``503 timeout`` with ``Retry-After``
    at the timeout (and :data:`UNWIND_GRACE`), whatever its cancellation still does: until
    2026-12-07 the answer waited for it, and a handler cancelled while it started or stopped a
    Kafka client against a broker that did not answer (the client is let finish, or stopped to
    the end, ``bridge.kafka.clients``) was answered after 15 s. What it does then is kept
    track of in ``unwinding`` until it ends, and a failure logged. While ``unwinding`` refuses
    (:data:`MAX_UNWINDING` of them by default), a request is answered ``503 unavailable`` with
    ``Retry-After`` at once, its handler not run (until 2026-12-07 each request against a hung
    broker left one more Kafka client open, without bound), except the probes and the scrape
    (:data:`PROBE_PATHS`).
    """
    tracked = Unwinding() if unwinding is None else unwinding

    def unwound(request: web.Request) -> Callable[[asyncio.Task[web.StreamResponse]], None]:
        template = route_template(request) or "unmatched"
        method = request.method

        def done(task: asyncio.Task[web.StreamResponse]) -> None:
            tracked.discard(task)
            if task.cancelled():
                return
            failed = task.exception()
            if failed is not None and not isinstance(failed, (Problem, web.HTTPException)):
                log.warning(
                    "answering %s %s failed after its timeout: %s",
                    method,
                    template,
                    type(failed).__name__,
                    exc_info=None if isinstance(failed, KafkaError) else failed,
                )

        return done

    async def within(request: web.Request, handler: Handler) -> web.StreamResponse:
        task = asyncio.ensure_future(handler(request))
        timed_out = False
        try:
            await asyncio.wait([task], timeout=timeout)
            if not task.done():
                timed_out = True
                task.cancel()
                await asyncio.wait([task], timeout=UNWIND_GRACE)
        except asyncio.CancelledError:
            # The request itself is cancelled (the server stopping): its handler is too, and
            # waited for, as when it ran in the request's own task.
            task.cancel()
            await asyncio.wait([task])
            if not task.cancelled() and task.exception() is not None:
                unwound(request)(task)  # logged, not left "never retrieved"
            raise
        if not task.done():
            tracked.add(task)
            task.add_done_callback(unwound(request))
            raise TimeoutError
        if timed_out and (task.cancelled() or task.exception() is not None):
            # Cancelled at its timeout: what it raised as it unwound is logged, and the
            # answer is the timeout's (a handler failing so was answered 500).
            unwound(request)(task)
            raise TimeoutError
        try:
            return task.result()
        except BaseException:
            # Raised again here, its traceback holds this frame, which held the task that
            # holds it: a reference cycle per problem answered (30 objects a 401), left to the
            # collector's full passes, which paused the loop 120-220 ms every few seconds under
            # a flood of refusals until 2026-12-07.
            del task
            raise

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if tracked.refusing and request.path not in PROBE_PATHS:
            tracked.refused()
            busy = Problem(
                "unavailable",
                f"{len(tracked)} requests are still unwinding after their timeout (waiting on "
                "the broker, most likely); try again after Retry-After seconds",
                headers={"Retry-After": str(REFUSED_RETRY_AFTER)},
            )
            return problem_response(busy)
        try:
            return await within(request, handler)
        except Problem as problem:
            return problem_response(problem)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            # aiohttp keeps the 404 or 405 of an unmatched request in the request's match info,
            # which its traceback's frames hold: a reference cycle of each, until 2026-12-07.
            exc.__traceback__ = None
            slug = _HTTP_SLUGS.get(exc.status)
            if slug is None:
                slug = "validation_failed" if exc.status < 500 else "internal_error"
            headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
            # Not the method and path sent: a path can carry what the client pasted in it, a
            # token among them (quoted until 2026-12-06).
            detail = _HTTP_DETAILS.get(exc.status, exc.reason)
            return problem_response(Problem(slug, detail, headers=headers, status=exc.status))
        except TimeoutError:
            late = Problem(
                "timeout", f"not answered within {timeout:g} s", headers={"Retry-After": "1"}
            )
            return problem_response(late)
        except KafkaError as exc:
            # The broker failed or could not be reached (a link cut, a request timed out): not
            # a bug and not the client's. A change being written may or may not have been
            # taken: the client reads it again, or sends it again (until 2026-12-06: a 500).
            template = route_template(request) or "unmatched"
            failed = type(exc).__name__
            log.warning("the broker failed answering %s %s: %s", request.method, template, failed)
            return problem_response(
                Problem(
                    "unavailable",
                    "the broker did not answer; try again (a change may have been written: "
                    "read it first)",
                    headers={"Retry-After": "1"},
                )
            )
        except Exception:
            # A bug, never bad input: logged with its traceback (no request body or header,
            # and the route's template, not the path sent, which may carry a pasted token).
            template = route_template(request) or "unmatched"
            log.exception("internal error answering %s %s", request.method, template)
            return problem_response(Problem("internal_error", "the bridge failed; see its log"))

    return middleware
