"""One URL per view; a broken view's fix lives one path segment below it."""

from django.urls import path

from shop import views

urlpatterns = [
    # 1. Sleeping on the loop
    path("sleepy/", views.sleepy, name="sleepy"),
    path("sleepy/fixed/", views.sleepy_fixed, name="sleepy-fixed"),
    # 2. A sync HTTP client in an async view
    path("sync-http/", views.sync_http, name="sync-http"),
    path("sync-http/fixed/", views.sync_http_fixed, name="sync-http-fixed"),
    path("sync-http/offloaded/", views.sync_http_offloaded, name="sync-http-offloaded"),
    # 3. CPU-bound work
    path("cpu-report/", views.cpu_report, name="cpu-report"),
    path("cpu-report/fixed/", views.cpu_report_fixed, name="cpu-report-fixed"),
    # 4. Fan-out: real and fake
    path("dashboard/", views.dashboard, name="dashboard"),
    path("dashboard/sequential/", views.dashboard_sequential, name="dashboard-sequential"),
    path("dashboard/threads/", views.dashboard_threads, name="dashboard-threads"),
    path(
        "dashboard/threads/fixed/", views.dashboard_threads_fixed, name="dashboard-threads-fixed"
    ),
    # 5. The async ORM
    path("posts/", views.post_list, name="post-list"),
    path("posts/new/", views.create_post_tx, name="post-create"),
    path("posts/<int:pk>/", views.post_detail, name="post-detail"),
    path("posts/<int:pk>/lazy/", views.post_detail_lazy, name="post-detail-lazy"),
    # 6. A classic sync view
    path("classic/", views.classic, name="classic"),
    # 7. Streaming
    path("stream/", views.stream, name="stream"),
    # 8. Fire and forget
    path("fire-and-forget/", views.fire_and_forget, name="fire-and-forget"),
    path("fire-and-forget/fixed/", views.fire_and_forget_fixed, name="fire-and-forget-fixed"),
    # 9. Request bodies
    path("echo/", views.echo, name="echo"),
]
