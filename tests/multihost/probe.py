"""A plain psycopg client loop, the harness's own check that its faults do
what they say before Phoenix is put through them: insert one row per tick
into `probe`, reconnect after any error, say what happened on stdout.

    python -m tests.multihost.probe URL NAME
"""

from __future__ import annotations

import sys
import time

import psycopg


def main() -> None:
    url, name = sys.argv[1], sys.argv[2]
    conn: psycopg.Connection[tuple[object, ...]] | None = None
    n = 0
    while True:
        try:
            if conn is None:
                # A silent partition must surface within about a second, not after the kernel's 15 min.
                conn = psycopg.connect(url, autocommit=True, connect_timeout=2, tcp_user_timeout=1000,
                                       keepalives_idle=1, keepalives_interval=1, keepalives_count=1)
                backend = conn.info.backend_pid
                print(f"connected backend={backend}", flush=True)
            n += 1
            conn.execute("INSERT INTO probe (host, n, backend) VALUES (%s, %s, pg_backend_pid())", (name, n))
        except psycopg.Error as error:
            print(f"error {type(error).__name__}: {str(error).strip().splitlines()[0] if str(error) else ''}",
                  flush=True)
            if conn is not None:
                conn.close()
            conn = None
        time.sleep(0.05)


if __name__ == "__main__":
    main()
