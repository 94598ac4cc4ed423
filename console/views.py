"""The operators' console: server-rendered pages over the same services as the API."""

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Count
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from actions import audit
from console import selectors
from console.access import requires
from console.forms import CONFIRM_ALL_WORD, IssuePassportForm, KillForm, LiftForm, RegisterAgentForm
from console.times import moment
from killswitch import rules as kill_rules
from killswitch import selectors as kill_selectors
from killswitch import services as killswitch
from killswitch.models import KillRule, Revocation, RuleMatch
from passports import selectors as passport_selectors
from passports import services as passports
from passports import signing
from passports.models import Agent, Passport, SigningKey
from passports.roles import Role, has_role, signed_in
from registry.errors import RequestRejected


@requires(Role.VIEWER)
@require_GET
def dashboard(request: HttpRequest) -> HttpResponse:
    revocations = selectors.recent_revocations()
    labels = selectors.target_labels(revocations)
    return render(
        request,
        "console/dashboard.html",
        {
            "stats": selectors.dashboard(),
            "revocations": [(r, labels[r.pk]) for r in revocations],
        },
    )


@requires(Role.VIEWER)
@require_GET
@never_cache
def dashboard_live(request: HttpRequest) -> JsonResponse:
    recent = selectors.recent_revocations()
    labels = selectors.target_labels(recent)
    revocations = [
        {
            "id": r.pk,
            "epoch": r.epoch,
            "target": labels[r.pk],
            "reason": r.reason,
            "source": r.source,
            "active": r.is_active,
            "at": moment(r.created_at),
        }
        for r in recent
    ]
    # The banner as every page shows it (the context processor supplies the kills in force).
    banner = render_to_string("console/_kill_banner.html", request=request)
    return JsonResponse(
        {"stats": selectors.dashboard(), "revocations": revocations, "banner": banner}
    )


@requires(Role.VIEWER)
def agents(request: HttpRequest) -> HttpResponse:
    form = RegisterAgentForm(request.POST or None)
    if request.method == "POST":
        if not has_role(request.user, Role.OPERATOR):
            raise PermissionDenied
        if form.is_valid():
            agent = passports.register_agent(owner=signed_in(request.user), **form.cleaned_data)
            messages.success(request, f"Agent {agent.name} registered.")
            return redirect("console:agent", agent_id=agent.pk)
    query, fleet, status = (request.GET.get(k, "").strip() for k in ("q", "fleet", "status"))
    try:
        found = passport_selectors.agents(fleet=fleet or None, status=status or None)
    except RequestRejected:
        found, status = passport_selectors.agents(fleet=fleet or None), ""
    if query:
        found = found.filter(name__icontains=query)
    page = Paginator(found.order_by("name"), 50).get_page(request.GET.get("page"))
    fleets = (
        Agent.objects.exclude(fleet="").order_by("fleet").values_list("fleet", flat=True).distinct()
    )
    return render(
        request,
        "console/agents.html",
        {
            "page": page,
            "stopped": selectors.stopped_by_group_kill(page.object_list),
            "form": form,
            "q": query,
            "fleet": fleet,
            "status": status,
            "fleets": fleets,
            "statuses": Agent.Status.values,
        },
    )


@requires(Role.VIEWER)
@require_GET
def agent_detail(request: HttpRequest, agent_id) -> HttpResponse:
    agent = get_object_or_404(Agent, pk=agent_id)
    passports_held = agent.passports.select_related("issued_by").order_by("-issued_at")[:20]
    status = passports.agent_run_status(agent)
    active_revocation = Revocation.objects.filter(
        target_type=Revocation.TargetType.AGENT, target_value=str(agent.pk), lifted_at__isnull=True
    ).first()
    return render(
        request,
        "console/agent.html",
        {
            "agent": agent,
            "passports": [(p, passports.effective_status(p)) for p in passports_held],
            "run_status": status,
            "stopped": selectors.stopped_by_group_kill([agent]),
            "active_revocation": active_revocation,
            "timeline": selectors.timeline_rows(agent),
        },
    )


@requires(Role.VIEWER)
@require_GET
@never_cache
def agent_live(request: HttpRequest, agent_id) -> JsonResponse:
    agent = get_object_or_404(Agent, pk=agent_id)
    status = passports.agent_run_status(agent)
    return JsonResponse(
        {
            "status": agent.status,
            "allowed": status["allowed"],
            "reasons": status["reasons"],
            "last_seen_at": moment(agent.last_seen_at),
            "last_seen_epoch": agent.last_seen_epoch,
            "last_seen_address": agent.last_seen_address,
            "timeline": selectors.timeline_rows(agent),
        }
    )


@requires(Role.OPERATOR)
def issue_passport(request: HttpRequest) -> HttpResponse:
    initial = {"agent": request.GET.get("agent")} if request.method == "GET" else None
    form = IssuePassportForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            issued = passports.issue_passport(
                agent=data["agent"],
                scope=data["scope"],
                jurisdiction=data["jurisdiction"],
                ttl_seconds=data["ttl_seconds"],
                issued_by=signed_in(request.user),
            )
        except RequestRejected as exc:
            form.add_error(exc.field if exc.field in form.fields else None, exc.message)
        else:
            response = render(request, "console/issued.html", {"issued": issued})
            response["Cache-Control"] = "no-store"  # the token is shown once
            return response
    return render(request, "console/issue.html", {"form": form})


def _kill_target(request: HttpRequest) -> tuple[killswitch.Target, str]:
    params = request.POST if request.method == "POST" else request.GET
    try:
        if params.get("all"):
            return killswitch.parse_target({"all": True}), "every agent"
        if params.get("fleet"):
            return killswitch.parse_target({"fleet": params["fleet"]}), f"fleet {params['fleet']}"
        if params.get("agent"):
            target = killswitch.parse_target({"agent": params["agent"]})
            name = Agent.objects.get(pk=target.value).name
            return target, f"agent {name}"
    except RequestRejected as exc:
        raise Http404(exc.message) from exc
    raise Http404("choose an agent, a fleet or all agents")


@requires(Role.OPERATOR)
def kill(request: HttpRequest) -> HttpResponse:
    target, label = _kill_target(request)
    params = request.POST if request.method == "POST" else request.GET
    suspend = params.get("mode") == "suspend" and target.type == Revocation.TargetType.AGENT
    everything = target.type == Revocation.TargetType.ALL
    form = KillForm(request.POST or None, everything=everything)
    if request.method == "POST" and form.is_valid():
        try:
            revocation = killswitch.revoke(
                target=target,
                reason=form.cleaned_data["reason"],
                actor=signed_in(request.user),
                source=Revocation.Source.CONSOLE,
                suspend=suspend,
            )
        except RequestRejected as exc:
            form.add_error(None, exc.message)
        else:
            return redirect("console:revocation", revocation_id=revocation.pk)
    return render(
        request,
        "console/kill.html",
        {
            "form": form,
            "target": target,
            "label": label,
            "everything": everything,
            "suspend": suspend,
            "confirm_word": CONFIRM_ALL_WORD,
            "affected": kill_selectors.targeted_agents(
                Revocation(target_type=target.type, target_value=target.value)
            ).count(),
        },
    )


@requires(Role.VIEWER)
@require_GET
def revocation_detail(request: HttpRequest, revocation_id: int) -> HttpResponse:
    revocation = get_object_or_404(
        Revocation.objects.select_related("actor", "lifted_by"), pk=revocation_id
    )
    return render(
        request,
        "console/revocation.html",
        {
            "revocation": revocation,
            "label": selectors.target_labels([revocation])[revocation.pk],
            **selectors.revoked_records(revocation),
            "acks": selectors.acknowledgements(revocation),
        },
    )


@requires(Role.VIEWER)
@require_GET
@never_cache
def revocation_acks(request: HttpRequest, revocation_id: int) -> JsonResponse:
    revocation = get_object_or_404(Revocation, pk=revocation_id)
    return JsonResponse(selectors.acknowledgements(revocation))


@requires(Role.OPERATOR)
@require_POST
def lift(request: HttpRequest, revocation_id: int) -> HttpResponse:
    revocation = get_object_or_404(Revocation, pk=revocation_id)
    form = LiftForm(request.POST)
    reason = form.cleaned_data["reason"] if form.is_valid() else ""
    try:
        killswitch.lift(revocation=revocation, actor=signed_in(request.user), reason=reason)
        messages.success(request, f"Revocation #{revocation.pk} lifted; agents reinstated.")
    except RequestRejected as exc:
        messages.error(request, exc.message)
    return redirect("console:revocation", revocation_id=revocation.pk)


@requires(Role.VIEWER)
@require_GET
def action_log(request: HttpRequest) -> HttpResponse:
    filters = {
        k: request.GET.get(k, "").strip() or None
        for k in ("agent", "fleet", "decision", "action", "since", "until")
    }
    error = None
    try:
        events = selectors.action_log(**filters).select_related("agent")
    except RequestRejected as exc:
        error, events = f"{exc.field}: {exc.message}", selectors.action_log()
    page = Paginator(events.order_by("-occurred_at", "-seq"), 100).get_page(request.GET.get("page"))
    report = audit.verify() if request.GET.get("verify") else None
    query = request.GET.copy()
    query.pop("page", None)
    query.pop("verify", None)
    return render(
        request,
        "console/actions.html",
        {
            "page": page,
            "filters": filters,
            "error": error,
            "report": report,
            "query": query.urlencode(),
        },
    )


@requires(Role.VIEWER)
@require_GET
def rules(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "console/rules.html",
        {
            "rules": KillRule.objects.order_by("name"),
            "matches": RuleMatch.objects.select_related("rule", "agent").order_by("-matched_at")[
                :50
            ],
        },
    )


@requires(Role.OPERATOR)
@require_POST
def rule_toggle(request: HttpRequest, rule_id: int) -> HttpResponse:
    rule = get_object_or_404(KillRule, pk=rule_id)
    field = request.POST.get("field")
    if field not in ("enabled", "dry_run"):
        raise Http404("unknown setting")
    changes = {field: not getattr(rule, field)}
    if not kill_rules.may_change(signed_in(request.user), changes):
        raise PermissionDenied("only an admin may enable or arm a rule")
    rule = kill_rules.update_rule(rule=rule, changes=changes)
    state = "on" if getattr(rule, field) else "off"
    messages.success(request, f"Rule {rule.name}: {field.replace('_', '-')} is now {state}.")
    return redirect("console:rules")


@requires(Role.ADMIN)
def keys(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        key = signing.rotate_signing_key()
        audit.create_checkpoints(everyone=True)
        retired = signing.retire_signing_keys()
        messages.success(
            request,
            f"New active key {key.kid}." + (f" Retired: {', '.join(retired)}." if retired else ""),
        )
        return redirect("console:keys")
    counts = dict(
        Passport.objects.filter(status=Passport.Status.ACTIVE)
        .values_list("kid")
        .annotate(n=Count("pk"))
    )
    rows = [(key, counts.get(key.kid, 0)) for key in SigningKey.objects.order_by("-created_at")]
    return render(request, "console/keys.html", {"keys": rows})
