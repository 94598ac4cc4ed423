from django import forms
from django.conf import settings

from passports.models import Agent


class RuleLinesField(forms.CharField):
    """One entry per line (blank lines ignored)."""

    def to_python(self, value):
        text = super().to_python(value) or ""
        return [line.strip() for line in text.replace(",", "\n").splitlines() if line.strip()]


class IssuePassportForm(forms.Form):
    agent = forms.ModelChoiceField(
        queryset=Agent.objects.filter(status=Agent.Status.ACTIVE).order_by("name"),
        empty_label="Choose an agent…",
    )
    scope = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 6, "spellcheck": "false"}),
        help_text="One rule per line, e.g. fs:*:/workspace/** or !net:connect:*:22",
    )
    jurisdiction = RuleLinesField(
        help_text="Regions separated by commas, e.g. EU, US-CA (GLOBAL for anywhere)"
    )
    ttl_seconds = forms.IntegerField(
        label="Lifetime (seconds)",
        min_value=1,
        required=False,
        help_text=f"Default {settings.PASSPORT_DEFAULT_TTL_SECONDS} s",
    )
    agent_may_renew = forms.BooleanField(
        label="Allow self-renewal",
        required=False,
        help_text="Off by default. When on, the agent may renew this passport itself (e.g. "
        "agent-passport run --renew): a successor with the same scope, jurisdiction and lifetime, "
        "only while this passport is active and nothing stops the agent; it can never widen "
        "anything.",
    )

    def clean_scope(self) -> list[str]:
        # Whitespace inside a rule is an error the rule engine names, so only split lines here.
        return [line.strip("\r") for line in self.cleaned_data["scope"].split("\n") if line.strip()]


class RegisterAgentForm(forms.Form):
    name = forms.CharField(max_length=200)
    fleet = forms.RegexField(
        regex=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        max_length=100,
        required=False,
        error_messages={"invalid": "Letters, digits, '.', '_' and '-' only."},
    )
    host = forms.CharField(max_length=255, required=False, help_text="Host name or IP address")
    description = forms.CharField(
        max_length=2000, required=False, widget=forms.Textarea(attrs={"rows": 2})
    )


CONFIRM_ALL_WORD = "KILL"


class KillForm(forms.Form):
    reason = forms.CharField(max_length=500, widget=forms.Textarea(attrs={"rows": 3}))
    confirm = forms.CharField(max_length=20, required=False)

    def __init__(self, *args, everything: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.everything = everything

    def clean_reason(self) -> str:
        reason = self.cleaned_data["reason"].strip()
        if not reason:
            raise forms.ValidationError("A reason is required.")
        return reason

    def clean_confirm(self) -> str:
        value = self.cleaned_data.get("confirm", "").strip()
        if self.everything and value != CONFIRM_ALL_WORD:
            raise forms.ValidationError(f"Type {CONFIRM_ALL_WORD} to stop every agent.")
        return value


class LiftForm(forms.Form):
    reason = forms.CharField(max_length=500, required=False)
