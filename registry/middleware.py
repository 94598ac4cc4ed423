"""Request checks that hold for the API and the console alike."""

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from registry.errors import RequestRejected, reject

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
NUL_MESSAGE = "contains a NUL character (%00), which cannot be stored or searched for"


class RejectNulCharacters:
    """A NUL character in a query or form parameter is a 400 naming the parameter.

    PostgreSQL refuses NUL in text, so ``?fleet=%00`` reached the database and became a 500.
    JSON bodies are checked by ``registry.parsers``; Django's form fields refuse NUL too, but
    views also read parameters directly.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        params = [request.GET]
        if request.method == "POST" and request.content_type in FORM_TYPES:
            params.append(request.POST)
        for query in params:
            for name, values in query.lists():
                if "\x00" in name or any("\x00" in value for value in values):
                    field = name.replace("\x00", "%00")
                    return reject(request, RequestRejected(field, NUL_MESSAGE))
        return self.get_response(request)
