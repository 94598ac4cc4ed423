"""The OpenAPI schema and its Swagger UI, for signed-in users.

A browser that is not signed in is sent to the sign-in page (and back afterwards); an API client
still gets the API's 401 JSON.
"""

from django.contrib.auth.views import redirect_to_login
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.exceptions import NotAuthenticated


class _SignInBrowsers:
    def handle_exception(self, exc: Exception):
        if isinstance(exc, NotAuthenticated) and "text/html" in self.request.headers.get(
            "Accept", ""
        ):
            return redirect_to_login(self.request.get_full_path())
        return super().handle_exception(exc)


class SchemaView(_SignInBrowsers, SpectacularAPIView):
    pass


class DocsView(_SignInBrowsers, SpectacularSwaggerView):
    pass
