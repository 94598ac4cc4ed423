"""What every app's API shares: strict input serializers and fields, and URL id patterns.

DRF coerces by default (``"1"`` for an integer, ``1`` for a string, unknown fields ignored); an
API that takes input from agents and integrations refuses instead, naming the field.
Pagination lives in :mod:`registry.pagination`.
"""

from typing import Any, cast

from rest_framework import serializers

UUID_PATTERN = r"[0-9a-fA-F-]{32,36}"
"""``lookup_value_regex`` of a viewset whose objects are identified by a UUID."""

DATABASE_ID_PATTERN = r"[0-9]+"
"""``lookup_value_regex`` of a viewset whose objects are identified by a database id."""


class StrictSerializer(serializers.Serializer):
    """Rejects a body that is not a JSON object or that carries fields this endpoint ignores."""

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, dict):
            if self.parent is not None:  # nested: the error goes under the field's own name
                raise serializers.ValidationError(["must be a JSON object"])
            raise serializers.ValidationError({"body": ["must be a JSON object"]})
        unknown = {name: ["unknown field"] for name in sorted(set(data) - set(self.fields))}
        try:
            value = super().to_internal_value(data)
        except serializers.ValidationError as exc:  # report every wrong field at once
            field_errors = cast(dict[str, Any], exc.detail)  # a serializer's are per field
            raise serializers.ValidationError({**unknown, **field_errors}) from exc
        if unknown:
            raise serializers.ValidationError(unknown)
        return value


class StrictCharField(serializers.CharField):
    """A CharField that refuses numbers, booleans and other non-strings instead of coercing."""

    default_error_messages = {"not_a_string": "must be a string"}

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("not_a_string")
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    """An integer given as a JSON number (no strings, booleans or fractions)."""

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    """A JSON ``true`` or ``false`` (no strings or numbers)."""

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid")
        return data
