from django.contrib.auth import views as auth_views
from django.templatetags.static import static
from django.urls import include, path
from django.views.generic import RedirectView

from console.access import ThrottledAuthenticationForm
from passports.api.views import healthz, jwks_view
from registry.apidocs import DocsView, SchemaView

urlpatterns = [
    path(
        "login/",
        auth_views.LoginView.as_view(authentication_form=ThrottledAuthenticationForm),
        name="login",
    ),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path(".well-known/jwks.json", jwks_view, name="jwks"),
    path("healthz", healthz, name="healthz"),
    # Browsers ask for /favicon.ico where no page links an icon (JSON, the API schema).
    path("favicon.ico", RedirectView.as_view(url=static("console/favicon.svg"), permanent=True)),
    path("api/v1/", include("passports.api.urls")),
    path("api/v1/", include("actions.api.urls")),
    path("api/v1/", include("killswitch.api.urls")),
    path("api/v1/", include("signals.api.urls")),
    path("api/schema/", SchemaView.as_view(), name="schema"),
    path("api/docs/", DocsView.as_view(url_name="schema"), name="api-docs"),
    path("", include("console.urls")),
]

handler400 = "registry.errors.bad_request"
handler403 = "registry.errors.forbidden"
handler404 = "registry.errors.not_found"
handler500 = "registry.errors.server_error"
