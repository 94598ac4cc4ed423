from rest_framework.routers import SimpleRouter

from killswitch.api.rules import KillRuleViewSet, RuleMatchViewSet
from killswitch.api.views import KillSwitchViewSet

router = SimpleRouter(trailing_slash=False)
router.register("killswitch", KillSwitchViewSet, basename="killswitch")
router.register("rules/matches", RuleMatchViewSet, basename="rule-match")
router.register("rules", KillRuleViewSet, basename="rule")

urlpatterns = router.urls
