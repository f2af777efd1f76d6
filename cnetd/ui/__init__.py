"""The web UI: server-rendered Jinja2 pages and fragments, htmx, server-sent events."""
