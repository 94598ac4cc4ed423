from django.urls import path

from actions.api.views import ActionsView

urlpatterns = [path("actions", ActionsView.as_view(), name="actions")]
