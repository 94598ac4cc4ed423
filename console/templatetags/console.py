"""Template filters of the console: ``{% load console %}``."""

from datetime import datetime

from django import template
from django.utils.html import format_html
from django.utils.safestring import SafeString

from console.times import Moment, moment

register = template.Library()


@register.filter
def when(value: datetime | Moment | None) -> SafeString | str:
    """A ``<time>`` element in the console's one time format; empty for no time (so that
    ``|default:"never"`` applies)."""
    shown = value if isinstance(value, dict) else moment(value)
    if shown is None:
        return ""
    return format_html(
        '<time datetime="{}" title="{}">{}</time>', shown["iso"], shown["iso"], shown["text"]
    )
