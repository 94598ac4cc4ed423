from django.apps import AppConfig


class ActionsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "actions"

    def ready(self) -> None:
        from actions import lookups, schema  # noqa: F401 (SQLite's glob function; OpenAPI auth)
        from actions.witnesses import configured

        configured()  # an unknown or malformed AUDIT_WITNESSES URL stops startup
