"""One error shape for the whole API: ``{"detail": ..., "errors": {field: [messages]}}``."""

import logging

from django.http import HttpRequest, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

logger = logging.getLogger(__name__)


class RequestRejected(Exception):
    """A service refused a request for a reason the caller can fix. ``field`` names the input."""

    status_code = status.HTTP_400_BAD_REQUEST

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class StateConflict(RequestRejected):
    """The request is well-formed but conflicts with the current state (e.g. revoking twice)."""

    status_code = status.HTTP_409_CONFLICT


def api_exception_handler(exc: Exception, context: dict) -> Response:
    if isinstance(exc, RequestRejected):
        return Response(
            {"detail": exc.message, "errors": {exc.field: [exc.message]}}, status=exc.status_code
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


def json_not_found(request: HttpRequest, exception: Exception) -> JsonResponse:
    return JsonResponse({"detail": "Not found."}, status=404)


def json_server_error(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"detail": "Internal error."}, status=500)


def json_bad_request(request: HttpRequest, exception: Exception) -> JsonResponse:
    return JsonResponse({"detail": "Bad request."}, status=400)


def json_forbidden(request: HttpRequest, exception: Exception) -> JsonResponse:
    return JsonResponse({"detail": "Forbidden."}, status=403)
