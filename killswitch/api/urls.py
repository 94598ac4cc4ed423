from rest_framework.routers import SimpleRouter

from killswitch.api.views import KillSwitchViewSet

router = SimpleRouter(trailing_slash=False)
router.register("killswitch", KillSwitchViewSet, basename="killswitch")

urlpatterns = router.urls
