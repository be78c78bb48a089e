"""What a job child runs: the fork server, the child's side of one attempt, its output capture
and fork-safety repairs. Kept small on purpose: every module imported here is in every child's
pages, so this package never imports the master, the store, psycopg, prometheus_client, click or rich.
"""
