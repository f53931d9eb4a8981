"""
The status service: a small twisted.web site, in the server's own process, that shows what
the connection registry knows as JSON (C{/api/...}) and as Prometheus metrics (C{/metrics}).
"""
