"""Operator roles. viewer reads; operator also issues and revokes; admin also manages keys.

A role is a Django group of the same name; a superuser counts as admin.
"""

from django.contrib.auth.models import AnonymousUser, Group, User
from django.core.exceptions import PermissionDenied
from django.db import models
from rest_framework.permissions import SAFE_METHODS, BasePermission


class Role(models.TextChoices):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"


_RANK = {Role.VIEWER: 1, Role.OPERATOR: 2, Role.ADMIN: 3}


def role_of(user: User | AnonymousUser | None) -> Role | None:
    if user is None or not user.is_authenticated or not user.is_active:
        return None
    if user.is_superuser:
        return Role.ADMIN
    names = set(user.groups.values_list("name", flat=True))
    for role in (Role.ADMIN, Role.OPERATOR, Role.VIEWER):
        if role.value in names:
            return role
    return None


def has_role(user: User | AnonymousUser | None, minimum: Role) -> bool:
    role = role_of(user)
    return role is not None and _RANK[role] >= _RANK[minimum]


def signed_in(user: User | AnonymousUser) -> User:
    """The user of a request that a role check let through (never anonymous, so the type
    says so: services record who acted)."""
    if not isinstance(user, User):
        raise PermissionDenied
    return user


def assign_role(user: User, role: Role) -> None:
    user.groups.remove(*Group.objects.filter(name__in=Role.values))
    group, _ = Group.objects.get_or_create(name=role.value)
    user.groups.add(group)


class _MinimumRole(BasePermission):
    minimum: Role

    def has_permission(self, request, view) -> bool:
        return has_role(request.user, self.minimum)


class IsViewer(_MinimumRole):
    minimum = Role.VIEWER


class ReadViewerWriteOperator(BasePermission):
    """Viewers may read; writes need the operator role."""

    def has_permission(self, request, view) -> bool:
        minimum = Role.VIEWER if request.method in SAFE_METHODS else Role.OPERATOR
        return has_role(request.user, minimum)
