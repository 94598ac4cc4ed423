"""The operators' console: server-rendered pages over the same services as the API.

Each view parses the request, calls one service or selector (``console.selectors`` holds a read
model per page), and renders.
"""

import uuid

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from actions.services import rotate_signing_key
from console import selectors
from console.access import requires
from console.forms import CONFIRM_ALL_WORD, IssuePassportForm, KillForm, LiftForm, RegisterAgentForm
from console.times import moment
from killswitch import rules as kill_rules
from killswitch import services as killswitch
from killswitch.models import Revocation
from passports import services as passports
from passports.models import Agent
from passports.roles import Role, has_role, signed_in
from registry.errors import RequestRejected


@requires(Role.VIEWER)
@require_GET
def dashboard(request: HttpRequest) -> HttpResponse:
    page = selectors.dashboard_page()
    return render(
        request, "console/dashboard.html", {"stats": page.stats, "revocations": page.revocations}
    )


@requires(Role.VIEWER)
@require_GET
@never_cache
def dashboard_live(request: HttpRequest) -> JsonResponse:
    page = selectors.dashboard_page()
    revocations = [
        {
            "id": r.pk,
            "epoch": r.epoch,
            "target": label,
            "reason": r.reason,
            "source": r.source,
            "active": r.is_active,
            "at": moment(r.created_at),
        }
        for r, label in page.revocations
    ]
    # The banner as every page shows it (the context processor supplies the kills in force).
    banner = render_to_string("console/_kill_banner.html", request=request)
    return JsonResponse({"stats": page.stats, "revocations": revocations, "banner": banner})


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
    listing = selectors.agents_page(
        query=query, fleet=fleet, status=status, page=request.GET.get("page")
    )
    return render(
        request,
        "console/agents.html",
        {
            "page": listing.page,
            "stopped": listing.stopped,
            "form": form,
            "q": query,
            "fleet": fleet,
            "status": listing.status,
            "fleets": listing.fleets,
            "statuses": Agent.Status.values,
        },
    )


@requires(Role.VIEWER)
@require_GET
def agent_detail(request: HttpRequest, agent_id: uuid.UUID) -> HttpResponse:
    page = selectors.agent_page(agent_id)
    return render(
        request,
        "console/agent.html",
        {
            "agent": page.agent,
            "passports": page.passports,
            "copies": page.copies,
            "run_status": page.run_status,
            "stopped": page.stopped,
            "active_revocation": page.active_revocation,
            "timeline": page.timeline,
        },
    )


@requires(Role.VIEWER)
@require_GET
@never_cache
def agent_live(request: HttpRequest, agent_id: uuid.UUID) -> JsonResponse:
    now = selectors.agent_now(agent_id)
    return JsonResponse(
        {
            "status": now.agent.status,
            "allowed": now.run_status.allowed,
            "reasons": now.run_status.reasons,
            "last_seen_at": moment(now.agent.last_seen_at),
            "last_seen_epoch": now.agent.last_seen_epoch,
            "last_seen_address": now.agent.last_seen_address,
            "timeline": now.timeline,
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
                agent_may_renew=data["agent_may_renew"],
            )
        except RequestRejected as exc:
            form.add_error(exc.field if exc.field in form.fields else None, exc.message)
        else:
            response = render(request, "console/issued.html", {"issued": issued})
            response["Cache-Control"] = "no-store"  # the token is shown once
            return response
    return render(request, "console/issue.html", {"form": form})


@requires(Role.OPERATOR)
def kill(request: HttpRequest) -> HttpResponse:
    params = request.POST if request.method == "POST" else request.GET
    chosen = selectors.kill_target(
        everything=bool(params.get("all")),
        fleet=params.get("fleet", ""),
        agent=params.get("agent", ""),
    )
    target = chosen.target
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
            "label": chosen.label,
            "everything": everything,
            "suspend": suspend,
            "confirm_word": CONFIRM_ALL_WORD,
            "affected": chosen.affected,
        },
    )


@requires(Role.VIEWER)
@require_GET
def revocation_detail(request: HttpRequest, revocation_id: int) -> HttpResponse:
    page = selectors.revocation_page(revocation_id)
    return render(
        request,
        "console/revocation.html",
        {
            "revocation": page.revocation,
            "label": page.label,
            "target_agent": page.target_agent,
            "target_passport": page.target_passport,
            "acks": page.acks,
        },
    )


@requires(Role.VIEWER)
@require_GET
@never_cache
def revocation_acks(request: HttpRequest, revocation_id: int) -> JsonResponse:
    return JsonResponse(selectors.acknowledgements(selectors.revocation(revocation_id)))


@requires(Role.OPERATOR)
@require_POST
def lift(request: HttpRequest, revocation_id: int) -> HttpResponse:
    revocation = selectors.revocation(revocation_id)
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
    log = selectors.action_log_page(
        filters=filters, page=request.GET.get("page"), verify=bool(request.GET.get("verify"))
    )
    query = request.GET.copy()
    query.pop("page", None)
    query.pop("verify", None)
    return render(
        request,
        "console/actions.html",
        {
            "page": log.page,
            "filters": filters,
            "error": log.error,
            "report": log.report,
            "query": query.urlencode(),
            "head": log.head,
        },
    )


@requires(Role.VIEWER)
@require_GET
@never_cache
def event_verify(request: HttpRequest, event_id: uuid.UUID) -> HttpResponse:
    """ "Verify this event": the server computes and checks its inclusion proof."""
    return render(request, "console/event_verify.html", {"check": selectors.event_check(event_id)})


@requires(Role.VIEWER)
@require_GET
def rules(request: HttpRequest) -> HttpResponse:
    page = selectors.rules_page()
    return render(request, "console/rules.html", {"rules": page.rules, "matches": page.matches})


@requires(Role.OPERATOR)
@require_POST
def rule_toggle(request: HttpRequest, rule_id: int) -> HttpResponse:
    switch = request.POST.get("field", "")
    try:
        rule = kill_rules.toggle_rule(
            rule=selectors.rule(rule_id), switch=switch, actor=signed_in(request.user)
        )
    except RequestRejected as exc:
        raise Http404("unknown setting") from exc
    state = "on" if getattr(rule, switch) else "off"
    messages.success(request, f"Rule {rule.name}: {switch.replace('_', '-')} is now {state}.")
    return redirect("console:rules")


@requires(Role.ADMIN)
def keys(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        rotation = rotate_signing_key()
        retired = f" Retired: {', '.join(rotation.retired)}." if rotation.retired else ""
        messages.success(request, f"New active key {rotation.key.kid}.{retired}")
        return redirect("console:keys")
    return render(request, "console/keys.html", {"keys": selectors.signing_keys()})
