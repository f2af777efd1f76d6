"""Model versions above the serving manager: every deploy of a name is its next version,
with an immutable, content-addressed copy of its artifact; each name has a default version
(and the previous one, kept warm for the rollback window) and at most one canary; requests
for a name are routed by these pointers (cnetd.ml.versions.service)."""
