"""The OpenAPI schema and its Swagger UI (its start-up script a file: no inline script under the
console's Content-Security-Policy), for signed-in users.

A browser that is not signed in is sent to the sign-in page (and back afterwards); an API client
still gets the API's 401 JSON.
"""

from django.contrib.auth.views import redirect_to_login
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from rest_framework.exceptions import NotAuthenticated
from rest_framework.views import APIView


class _SignInBrowsers(APIView):
    def handle_exception(self, exc: Exception):
        if isinstance(exc, NotAuthenticated) and "text/html" in self.request.headers.get(
            "Accept", ""
        ):
            return redirect_to_login(self.request.get_full_path())
        return super().handle_exception(exc)


class SchemaView(_SignInBrowsers, SpectacularAPIView):
    pass


class DocsView(_SignInBrowsers, SpectacularSwaggerSplitView):
    pass
