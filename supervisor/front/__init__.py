"""The request path: one front end's accept loop, ASGI app, static files, answers, KV dispatch
and the tenant router."""
