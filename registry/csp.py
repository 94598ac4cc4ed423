"""Content-Security-Policy on every response (Django 5.2 has none built in; 6.0 does).

The console needs no inline script, style or event handler: its script and styles are static
files. Swagger UI (the API docs) draws its icons as ``data:`` images, so its page alone may load
those; its start-up script is served as a file (``SpectacularSwaggerSplitView``).
"""

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

POLICY = {
    "default-src": "'self'",
    "script-src": "'self'",
    "style-src": "'self'",
    "img-src": "'self'",
    "object-src": "'none'",
    "base-uri": "'none'",
    "form-action": "'self'",
    "frame-ancestors": "'none'",
}
API_DOCS_POLICY = {**POLICY, "img-src": "'self' data:"}


def header(policy: dict[str, str]) -> str:
    return "; ".join(f"{directive} {sources}" for directive, sources in policy.items())


class ContentSecurityPolicyMiddleware:
    """Adds the policy to responses that do not set their own."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.console = header(POLICY)
        self.api_docs = header(API_DOCS_POLICY)

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        match = request.resolver_match
        docs = match is not None and match.url_name == "api-docs"
        response.headers.setdefault(
            "Content-Security-Policy", self.api_docs if docs else self.console
        )
        return response
