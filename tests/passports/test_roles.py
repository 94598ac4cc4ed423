import pytest
from django.contrib.auth.models import AnonymousUser, User
from django.core.exceptions import PermissionDenied

from passports.roles import signed_in


def test_signed_in_refuses_an_anonymous_user():
    with pytest.raises(PermissionDenied):
        signed_in(AnonymousUser())


@pytest.mark.django_db
def test_signed_in_is_the_user_itself():
    user = User.objects.create_user("ops")
    assert signed_in(user) is user
