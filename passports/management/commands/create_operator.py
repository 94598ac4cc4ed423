import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from passports.auth import create_api_token
from passports.models import ApiToken
from passports.roles import Role, assign_role


class Command(BaseCommand):
    help = "Create an operator (or reset one) and print its password and API token."

    def add_arguments(self, parser) -> None:
        parser.add_argument("name", help="login name")
        parser.add_argument("--role", choices=Role.values, default=Role.VIEWER.value)
        existing = parser.add_mutually_exclusive_group()
        existing.add_argument(
            "--reset",
            action="store_true",
            help="if the user exists, set a new password and replace its API tokens with one",
        )
        existing.add_argument(
            "--keep-password",
            action="store_true",
            help="if the user exists, keep its password and replace its API tokens with one",
        )

    @transaction.atomic
    def handle(
        self, name: str, role: str, reset: bool, keep_password: bool, **options: object
    ) -> None:
        name = name.strip()
        if not name or len(name) > 150:
            raise CommandError("NAME must be 1 to 150 characters")
        User = get_user_model()
        user = User.objects.filter(username=name).first()
        if user is not None and not (reset or keep_password):
            raise CommandError(
                f"user {name!r} already exists (use --reset to issue new credentials)"
            )
        if user is None or reset:
            password = secrets.token_urlsafe(12)
            user = user or User(username=name)
            user.set_password(password)
            user.save()
            password_line = password
        else:
            password_line = f"(unchanged; `create_operator {name} --reset` sets a new one)"
        assign_role(user, Role(role))
        # One token per user from this command: new credentials replace the old ones.
        ApiToken.objects.filter(user=user).delete()
        token = create_api_token(user=user)
        self.stdout.write(
            f"user:     {name}\nrole:     {role}\npassword: {password_line}\ntoken:    {token}\n"
        )
