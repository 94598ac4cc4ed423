from django.apps import AppConfig


class PassportsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "passports"

    def ready(self) -> None:
        from passports import schema  # noqa: F401 (registers the OpenAPI auth extension)
