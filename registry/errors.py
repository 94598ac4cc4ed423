"""One error shape for the whole API: ``{"detail": ..., "errors": {field: [messages]}}``."""

import logging

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

logger = logging.getLogger(__name__)


class RequestRejected(Exception):
    """A service refused a request for a reason the caller can fix. ``field`` names the input."""

    status_code = status.HTTP_400_BAD_REQUEST
    retry_after: int | None = None  # seconds: the same request may succeed then (Retry-After)

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class StateConflict(RequestRejected):
    """The request is well-formed but conflicts with the current state (e.g. revoking twice)."""

    status_code = status.HTTP_409_CONFLICT


class ConcurrentConflict(StateConflict):
    """A concurrent request got there first; sending the same request again may succeed."""

    retry_after = 0


def api_exception_handler(exc: Exception, context: dict) -> Response:
    if isinstance(exc, RequestRejected):
        retry = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
        return Response(
            {"detail": exc.message, "errors": {exc.field: [exc.message]}},
            status=exc.status_code,
            headers=retry,
        )
    response = exception_handler(exc, context)
    if response is None:
        logger.exception("unhandled API error", exc_info=exc)
        return Response({"detail": "Internal error."}, status=status.HTTP_500_INTERNAL_SERVER_ERROR)
    if isinstance(exc, exceptions.ValidationError):
        errors = (
            response.data
            if isinstance(response.data, dict)
            else {"non_field_errors": response.data}
        )
        first = next(iter(errors), "request")
        response.data = {"detail": f"Invalid input in '{first}'.", "errors": errors}
    elif isinstance(exc, exceptions.ParseError):
        response.data = {"detail": str(exc.detail), "errors": {"body": [str(exc.detail)]}}
    return response


def _wants_json(request: HttpRequest) -> bool:
    return request.path.startswith(("/api/", "/.well-known/")) or request.path.endswith(".json")


def _error(request: HttpRequest, status_code: int, detail: str) -> HttpResponse:
    """JSON for the API, a page for the console; never a stack trace."""
    if _wants_json(request):
        return JsonResponse({"detail": detail}, status=status_code)
    template = {403: "403.html", 404: "404.html"}.get(status_code)
    if template:
        return render(request, template, {"detail": detail}, status=status_code)
    return HttpResponse(detail, status=status_code, content_type="text/plain")


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    return _error(request, 404, "Not found.")


def forbidden(request: HttpRequest, exception: Exception) -> HttpResponse:
    return _error(request, 403, "Forbidden.")


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    return _error(request, 400, "Bad request.")


def server_error(request: HttpRequest) -> HttpResponse:
    return _error(request, 500, "Internal error.")


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """A forged or stale form: 403, without Django's debug explanation."""
    return _error(request, 403, "Forbidden (CSRF check failed). Reload the page and try again.")
