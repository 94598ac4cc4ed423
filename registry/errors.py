"""One error shape for the whole API: ``{"detail": ..., "errors": {field: [messages]}}``."""

import logging
from http import HTTPStatus

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

logger = logging.getLogger(__name__)


class RequestRejected(Exception):
    """A service refused a request for a reason the caller can fix. ``field`` names the input."""

    status_code: int = status.HTTP_400_BAD_REQUEST
    retry_after: int | None = None  # seconds: the same request may succeed then (Retry-After)
    reason: str | None = None  # a machine-readable code, added to the body when set

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


class BodyTooLarge(RequestRejected):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE


def _rejection(exc: Exception) -> RequestRejected | None:
    """``exc`` as a RequestRejected, including Django's refusals of oversized requests (which
    DRF would otherwise answer with a 500); None for anything else."""
    if isinstance(exc, RequestDataTooBig):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return BodyTooLarge("body", f"is larger than {limit} bytes; send less per request")
    if isinstance(exc, TooManyFieldsSent):
        limit = settings.DATA_UPLOAD_MAX_NUMBER_FIELDS
        return RequestRejected("request", f"has more than {limit} parameters")
    return exc if isinstance(exc, RequestRejected) else None


def _body(rejected: RequestRejected) -> dict:
    body = {"detail": rejected.message, "errors": {rejected.field: [rejected.message]}}
    return body if rejected.reason is None else {**body, "reason": rejected.reason}


def _headers(rejected: RequestRejected) -> dict[str, str] | None:
    if rejected.retry_after is None:
        return None
    return {"Retry-After": str(rejected.retry_after)}


def _paths(errors: dict, prefix: str = "") -> list[str]:
    """The dotted paths of the fields with errors: ``heartbeat.supervisor.processes``."""
    paths = []
    for name, value in errors.items():
        path = f"{prefix}.{name}" if prefix else str(name)
        paths.extend(_paths(value, path) if isinstance(value, dict) and value else [path])
    return paths


def api_exception_handler(exc: Exception, context: dict) -> Response:
    if rejected := _rejection(exc):
        return Response(_body(rejected), status=rejected.status_code, headers=_headers(rejected))
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
        names = ", ".join(f"'{path}'" for path in _paths(errors)) or "'request'"
        response.data = {"detail": f"Invalid input in {names}.", "errors": errors}
    elif isinstance(exc, exceptions.ParseError):
        field = getattr(exc, "field", "body")  # registry.parsers.RefusedJSON names the field
        response.data = {"detail": str(exc.detail), "errors": {field: [str(exc.detail)]}}
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
    if status_code < 500:
        title = HTTPStatus(status_code).phrase
        return render(request, "error.html", {"title": title, "detail": detail}, status=status_code)
    return HttpResponse(detail, status=status_code, content_type="text/plain")


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    return _error(request, 404, "Not found.")


def forbidden(request: HttpRequest, exception: Exception) -> HttpResponse:
    return _error(request, 403, "Forbidden.")


def reject(request: HttpRequest, rejected: RequestRejected) -> HttpResponse:
    """A refusal outside DRF's views: the API's error shape, or a page naming the input."""
    if _wants_json(request):
        return JsonResponse(
            _body(rejected), status=rejected.status_code, headers=_headers(rejected)
        )
    return _error(request, rejected.status_code, f"'{rejected.field}' {rejected.message}.")


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    if rejected := _rejection(exception):
        return reject(request, rejected)
    return _error(request, 400, "Bad request.")


def server_error(request: HttpRequest) -> HttpResponse:
    return _error(request, 500, "Internal error.")


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """A forged or stale form: 403, without Django's debug explanation."""
    return _error(request, 403, "Forbidden (CSRF check failed). Reload the page and try again.")
