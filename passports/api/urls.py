from rest_framework.routers import SimpleRouter

from passports.api.views import AgentViewSet, PassportViewSet

router = SimpleRouter(trailing_slash=False)
router.register("agents", AgentViewSet, basename="agent")
router.register("passports", PassportViewSet, basename="passport")

urlpatterns = router.urls
