"""OpenAPI description of the passport bearer authentication (drf-spectacular extension)."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class PassportBearerScheme(OpenApiAuthenticationExtension):
    target_class = "actions.auth.PassportBearerAuthentication"
    name = "passportBearer"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "agent-passport+jwt",
            "description": "The agent's own passport token.",
        }
