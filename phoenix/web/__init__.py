"""`phoenix dashboard`: a live web view of the store, in a process of its own.

Only this package (and the `dashboard` command, which imports it when run)
imports the web extra's libraries (starlette, uvicorn, jinja2); nothing of
the master imports it. See docs/dashboard.md."""
