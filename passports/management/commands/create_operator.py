import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from passports.auth import create_api_token
from passports.roles import Role, assign_role


class Command(BaseCommand):
    help = "Create an operator (or reset one) and print its password and API token."

    def add_arguments(self, parser) -> None:
        parser.add_argument("name", help="login name")
        parser.add_argument("--role", choices=Role.values, default=Role.VIEWER.value)
        parser.add_argument(
            "--reset", action="store_true", help="if the user exists, set a new password and token"
        )

    @transaction.atomic
    def handle(self, name: str, role: str, reset: bool, **options) -> None:
        name = name.strip()
        if not name or len(name) > 150:
            raise CommandError("NAME must be 1 to 150 characters")
        User = get_user_model()
        user = User.objects.filter(username=name).first()
        if user is not None and not reset:
            raise CommandError(
                f"user {name!r} already exists (use --reset to issue new credentials)"
            )
        if user is None:
            user = User(username=name)
        password = secrets.token_urlsafe(12)
        user.set_password(password)
        user.save()
        assign_role(user, Role(role))
        token = create_api_token(user=user)
        self.stdout.write(
            f"user:     {name}\nrole:     {role}\npassword: {password}\ntoken:    {token}\n"
        )
