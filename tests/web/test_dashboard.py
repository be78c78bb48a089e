"""`phoenix dashboard` as a real process over a real master's journal: its
JSON API and token rules read with urllib, its pages in headless Chromium
(typed into, clicked, read back from the live DOM)."""

from __future__ import annotations

import json
import os
import select
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
from click.testing import CliRunner

from phoenix.cli.main import main
from phoenix.store.sqlite import Journal
from tests.conftest import PYTHON, REPO, phoenix_cli, wait_for
from tests.web.browser import CHROMIUM, Browser

pytest.importorskip("starlette", reason="the dashboard needs the web extra: pip install -e '.[test,web]'")

TOKEN = "s3cret-token-for-the-tests-0123456789"
# A key a browser would run if it were ever taken as HTML, in a tag's body or an attribute.
EVIL_KEY = "<img src=x onerror=\"window.pwned=1\"><script>window.pwned=2</script>&amp;"
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (installed by .ci/run)")


class Dashboard:
    """`phoenix dashboard --port 0` in its own process; `url` as it printed it."""

    def __init__(self, log_path: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        with open(log_path, "ab") as log_file:  # its stderr: the actions' lines
            self.proc = subprocess.Popen([PYTHON, "-m", "phoenix", "dashboard", "--port", "0", *args], cwd=REPO,
                                         env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                                         stderr=log_file, text=True)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 20.0)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("phoenix dashboard: http://"):
            self.stop()
            raise AssertionError(f"the dashboard did not start: {line!r} {self.log()}")
        self.url = line.split()[2]

    def request(self, method: str, path: str, token: str | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(self.url.rstrip("/") + path, method=method, headers=sent)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, dict(response.headers.items()), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers.items()), error.read()

    def get(self, path: str, **kwargs: Any) -> Any:
        status, _headers, body = self.request("GET", path, **kwargs)
        assert status == 200, (path, status, body)
        return json.loads(body)

    def stop(self) -> int:
        """TERM, and its exit status (KILL if it hangs: that is a failure too)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def dashboards(tmp_path: Path) -> Iterator[Any]:
    started: list[Dashboard] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Dashboard:
        board = Dashboard(tmp_path / f"dashboard-{len(started)}.log", *args, env=env)
        started.append(board)
        return board

    yield start
    codes = [board.stop() for board in started]
    assert codes == [0] * len(started)  # TERM is a clean stop


def quoted(key: str) -> str:
    return urllib.parse.quote(key, safe="")


def jobs_of(board: Dashboard, query: str = "") -> dict[str, dict[str, Any]]:
    return {job["key"]: job for job in board.get(f"/api/jobs{query}")["jobs"]}


@pytest.fixture
def busy_master(master_factory: Any) -> Any:
    """A master with a finished, a failed (an evil key's), a running and a
    failed-but-would-pass-now job: `flaky` fails its first 4 attempts (all
    its retries), so a retry by the operator finishes."""
    master = master_factory(start=False)
    master.state_dir.mkdir(mode=0o700)
    master.submit_many([("tests.apps.jobs:noop", {}, "done-1"), ("tests.apps.jobs:raises", {}, EVIL_KEY),
                        ("tests.apps.jobs:flaky", {"fail_times": 4}, "flaky-1"),
                        ("tests.apps.jobs:wait_forever", {}, "forever")])
    master.start()
    master.wait_jobs_done(["done-1", EVIL_KEY, "flaky-1"])
    wait_for(lambda: master.jobs()["forever"]["state"] == "running", what="the job that runs on to start")
    return master


def test_api_token_rules_headers_and_escaping(busy_master: Any, state_dir: Path, dashboards: Any) -> None:
    board = dashboards("--state-dir", str(state_dir), env={"PHOENIX_DASHBOARD_TOKEN": TOKEN})

    jobs = jobs_of(board)
    assert {key: job["state"] for key, job in jobs.items()} == {
        "done-1": "finished", EVIL_KEY: "failed", "flaky-1": "failed", "forever": "running"}
    assert jobs["flaky-1"]["attempt"] == 4 and jobs["forever"]["target"] == "tests.apps.jobs:wait_forever"
    assert all(job["node"] for job in jobs.values())
    assert set(jobs_of(board, "?state=failed")) == {EVIL_KEY, "flaky-1"}
    assert set(jobs_of(board, "?target=tests.apps.jobs:noop")) == {"done-1"}
    assert set(jobs_of(board, "?q=f")) == {"flaky-1", "forever"}  # a prefix of the key
    first = board.get("/api/jobs?limit=3")
    rest = board.get("/api/jobs?limit=3&after=" + quoted(first["next_after"]))
    assert first["more"] == 1 and [job["key"] for job in first["jobs"] + rest["jobs"]] == list(jobs)
    assert board.request("GET", "/api/jobs?state=bogus")[0] == 400

    shown = board.get(f"/api/jobs/{quoted(EVIL_KEY)}")
    assert shown["key"] == EVIL_KEY and shown["attempt_list"][0]["outcome"] == "error"
    assert "boom from the job" in shown["attempt_list"][0]["error"]
    assert board.request("GET", "/api/jobs/no-such-job")[0] == 404
    (master,) = board.get("/api/masters")["masters"]
    assert (master["pid"], master["generation"], master["state"]) == (busy_master.pid, 1, "running")
    assert master["slots_used"] == 1
    failures = {failure["key"]: failure for failure in board.get("/api/failures")["failures"]}
    assert failures[EVIL_KEY]["error_line"] == "ValueError: boom from the job" and "flaky-1" in failures
    timeline = board.get("/api/timeline")
    assert [event["kind"] for event in timeline["events"]] == ["master_start"]
    assert {(a["key"], a["n"]) for a in timeline["attempts"]} >= {("flaky-1", 4), ("forever", 1), (EVIL_KEY, 1)}

    # Every answer: a strict CSP, nosniff, no framing, and never a CORS header, whoever asks.
    for path in ("/", "/jobs", "/api/jobs", "/static/dashboard.js"):
        _status, headers, _body = board.request("GET", path, headers={"Origin": "http://evil.example"})
        policy = headers["content-security-policy"]
        assert "script-src 'self';" in policy and "frame-ancestors 'none'" in policy
        assert "unsafe-inline" not in policy and headers["x-content-type-options"] == "nosniff"
        assert not any(name.lower().startswith("access-control-") for name in headers)
    # A page of another site whose name resolves here (DNS rebinding) reads nothing.
    assert board.request("GET", "/api/jobs", headers={"Host": "evil.example"})[0] == 421

    # The evil key in a page: text in a tag's body and in an attribute, never markup.
    _status, _headers, page = board.request("GET", "/jobs")
    html = page.decode()
    assert "<img" not in html and html.count("<script") == 1  # the page's one script, from /static
    assert "&lt;img src=x onerror=&#34;window.pwned=1&#34;&gt;&lt;script&gt;" in html
    assert "&amp;amp;" in html  # the key's own "&amp;" shown as typed

    # Actions: the token, or 401; retry does what `phoenix retry` does, cancel what `phoenix cancel` does.
    assert board.request("POST", "/api/jobs/flaky-1/retry")[0] == 401
    status, headers, _body = board.request("POST", "/api/jobs/flaky-1/retry", token=TOKEN[:-1] + "x")
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    assert jobs_of(board)["flaky-1"]["state"] == "failed"  # refused: nothing changed
    status, _headers, body = board.request("POST", "/api/jobs/flaky-1/retry", token=TOKEN)
    assert status == 200 and json.loads(body)["retried"] == ["flaky-1"]
    wait_for(lambda: jobs_of(board)["flaky-1"]["state"] == "finished", what="the retried job to finish")
    assert board.request("POST", "/api/jobs/done-1/retry", token=TOKEN)[0] == 409  # finished: not retried
    status, _headers, body = board.request("POST", "/api/jobs/forever/cancel", token=TOKEN)
    assert status == 200 and json.loads(body)["was"] == "running"
    wait_for(lambda: jobs_of(board)["forever"]["state"] == "cancelled", what="the cancelled job to end")
    assert board.request("POST", "/api/jobs/no-such-job/cancel", token=TOKEN)[0] == 404
    actions = [line for line in board.log().splitlines() if "dashboard_action" in line]
    assert len(actions) == 6 and all("client=127.0.0.1" in line for line in actions), actions
    assert sum("WARNING" in line and "status=401" in line for line in actions) == 2  # the refused tokens

    # A master stopped by SIGSTOP holds its lock but runs nothing: not "running", as status says.
    busy_master.signal(signal.SIGSTOP)
    try:
        wait_for(lambda: board.get("/api/masters")["masters"][0]["state"] == "not responding",
                 what="the stopped master to show as not responding")
    finally:
        busy_master.signal(signal.SIGCONT)

    # Its port is taken: one line, exit 1.
    taken = phoenix_cli("dashboard", "--port", board.url.rstrip("/").rpartition(":")[2], state_dir=state_dir)
    assert taken.returncode == 1 and "Address already in use" in taken.stderr and len(taken.stderr.splitlines()) == 1

    # Without a token configured: read-only, whatever the request carries.
    read_only = dashboards("--state-dir", str(state_dir), env={"PHOENIX_DASHBOARD_TOKEN": ""})
    assert read_only.get("/api/jobs")["total"] == 4
    assert read_only.request("POST", f"/api/jobs/{quoted(EVIL_KEY)}/retry", token=TOKEN)[0] == 403
    assert jobs_of(read_only)[EVIL_KEY]["state"] == "failed"
    assert "read-only" in read_only.request("GET", "/jobs")[2].decode()


def test_bad_flags_a_loose_token_file_and_a_missing_extra_are_one_line(state_dir: Path, tmp_path: Path) -> None:
    def refused(*args: str, env: dict[str, str] | None = None) -> str:
        result = CliRunner().invoke(main, ["dashboard", *args], env=env)
        assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1, (args, result.stderr)
        return result.stderr

    assert "'--port'" in refused("--port", "http") and "--bogus" in refused("--bogus")
    assert "no journal" in refused("--state-dir", str(state_dir))  # nothing has run here: nothing to show
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o644)
    assert "chmod 600" in refused("--token-file", str(token_file))
    assert "at least 16" in refused(env={"PHOENIX_DASHBOARD_TOKEN": "short"})
    # Without the web extra (its import blocked, as when it is not installed): one line naming it.
    state_dir.mkdir(mode=0o700)
    Journal(state_dir / "journal.db").close()
    blocked = subprocess.run(
        [PYTHON, "-c", "import sys; sys.modules['starlette'] = None; from phoenix.cli.main import main; main()",
         "dashboard", "--state-dir", str(state_dir)], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert blocked.returncode == 2, blocked.stderr
    assert blocked.stderr.strip().endswith("pip install 'phoenix-procmaster[web]'")
    assert len(blocked.stderr.splitlines()) == 1


@needs_chromium
def test_pages_in_a_browser_filter_retry_and_an_injected_key(busy_master: Any, state_dir: Path, tmp_path: Path,
                                                             dashboards: Any) -> None:
    board = dashboards("--state-dir", str(state_dir), env={"PHOENIX_DASHBOARD_TOKEN": TOKEN})
    rows = "Array.from(document.querySelectorAll('table.live tbody tr'))"
    keys = f"{rows}.map(r => r.cells[0].textContent)"
    with Browser(tmp_path / "profile") as browser:
        browser.go(board.url + "jobs")
        shown = set(browser.js(keys))
        assert shown == {"done-1", EVIL_KEY, "flaky-1", "forever"}
        # The injected key is text: no element made of it, nothing of it run.
        assert browser.js("document.querySelectorAll('img, main script').length") == 0
        assert browser.js("window.pwned === undefined")

        # A filter applies in place: the page is not reloaded (a mark left on it stays), the address follows.
        browser.js("window.stayed = true")
        browser.js("document.querySelector('#filters select[name=state]').value = 'failed'")
        browser.click("#filters button[type=submit]")
        browser.wait(f"{keys}.sort().join('|') === {json.dumps('|'.join(sorted([EVIL_KEY, 'flaky-1'])))}",
                     "the failed jobs only")
        assert browser.js("window.stayed === true && location.search === '?state=failed'")

        # Retry with the token typed in: the job's row goes from failed to finished by the page's polling.
        browser.type("#token", TOKEN)
        browser.click("#token-form button")
        browser.js("document.querySelector('#filters select[name=state]').value = ''")
        browser.click("#filters button[type=submit]")
        browser.wait(f"{keys}.length === 4", "every job again")
        browser.click("button.action[data-key='flaky-1']")
        state_of = f"{rows}.filter(r => r.cells[0].textContent === 'flaky-1').map(r => r.cells[1].textContent)[0]"
        browser.wait(f"{state_of} === 'finished'", "the retried job to show finished", timeout=15)
        assert browser.js("window.stayed === true")
        assert browser.js("window.pwned === undefined")  # redrawn from JSON: still text

        # The other pages render their data; the one job's page shows the evil key as its title, as text.
        browser.go(board.url + "job?" + urllib.parse.urlencode({"key": EVIL_KEY}))
        assert browser.js("document.querySelector('h1 .key').textContent") == EVIL_KEY
        browser.wait("document.getElementById('updated').textContent !== ''", "a refresh of the job's page")
        assert browser.js("document.querySelectorAll('img').length") == 0 and browser.js("window.pwned === undefined")
        browser.go(board.url)
        assert browser.js(f"{rows}.map(r => r.cells[1].textContent)") == [str(busy_master.pid)]
        if os.environ.get("PHOENIX_DASHBOARD_SCREENSHOT"):  # docs/dashboard.png is made by this test
            browser.go(board.url + "jobs")
            browser.screenshot(Path(os.environ["PHOENIX_DASHBOARD_SCREENSHOT"]))
        assert browser.console_errors() == []  # no CSP violation, no script error


@needs_chromium
def test_the_pages_script_draws_a_row_another_tool_damaged_escaped(state_dir: Path, tmp_path: Path,
                                                                  dashboards: Any) -> None:
    """Found from outside: a key that is not UTF-8 and a BLOB of terminal
    controls in jobs.state made /jobs answer 500, and text in a time column
    stopped the page's script ("could not refresh": an invalid Date). The
    script draws them escaped, as the server did."""
    state_dir.mkdir(mode=0o700)
    with Journal(state_dir / "journal.db") as journal:
        journal.submit("tests.apps.jobs:noop", "{}", "k1")
        journal.submit("tests.apps.jobs:noop", "{}", "sound")
    db = sqlite3.connect(state_dir / "journal.db")
    with db:
        db.execute("UPDATE jobs SET key = x'6b31ff', state = ?, updated_at = ? WHERE key = 'k1'",
                   (b"pending\x1b[31mRED", "soon\x1b[1m"))
    db.close()
    board = dashboards("--state-dir", str(state_dir))
    rows = "Array.from(document.querySelectorAll('table.live tbody tr'))"
    cells = f"{rows}.map(r => Array.from(r.cells).slice(0, 8).map(c => c.textContent))"
    with Browser(tmp_path / "profile") as browser:
        browser.go(board.url + "jobs")
        drawn_by_server = browser.js(cells)
        browser.js("document.getElementById('updated').textContent = ''")
        browser.wait("document.getElementById('updated').textContent !== ''", "a refresh of the jobs page")
        assert browser.js("document.getElementById('message').textContent") == ""
        drawn = browser.js(cells)
        assert drawn == drawn_by_server, (drawn, drawn_by_server)
        [damaged] = [row for row in drawn if row[0] == "k1\\udcff"]
        assert damaged[1] == "pending\\x1b[31mRED" and damaged[7] == "soon\\x1b[1m", damaged
        assert browser.js("document.querySelector('td a').getAttribute('href')").startswith("/job?key=")
        assert browser.console_errors() == []


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def test_a_shared_store_its_masters_and_its_jobs(pg_url: str, tmp_path: Path, dashboards: Any) -> None:
    """--store URL: every master's row (its degraded reason too) and the jobs with the node that ran them."""
    pytest.importorskip("psycopg")
    from phoenix.store.postgres import PgStore

    with PgStore(pg_url, node="n1") as store:  # a master's writes, in-process: the dashboard only reads them
        store.register_master(os.getpid(), 3, time.time(), 4, "tests.apps.jobs:app")
        store.set_meta(state="degraded", degraded_reason="ImportError: <b>boom</b>")
        store.renew_lease("degraded", 4, 0)
        store.submit("m:f", "{}", "feed-1")
        store.submit("m:f", "{}", "other")
        claimed = store.claim(3, 4242, None)
        assert claimed is not None
        store.fail_without_attempt(claimed[0].id, "no such target")
        for callback_id, *_rest in store.owed_callbacks():  # its on_failed ran: it may be retried
            store.callback_started(callback_id)
            store.callback_done(callback_id, None)
    board = dashboards("--store", pg_url, "--state-dir", str(tmp_path / "here"),
                       env={"PHOENIX_DASHBOARD_TOKEN": TOKEN})
    (master,) = board.get("/api/masters")["masters"]
    assert (master["node"], master["generation"], master["slots"], master["state"]) == ("n1", 3, 4, "degraded")
    assert master["degraded_reason"] == "ImportError: <b>boom</b>"
    assert "ImportError: &lt;b&gt;boom&lt;/b&gt;" in board.request("GET", "/")[2].decode()
    jobs = jobs_of(board)
    assert jobs["feed-1"]["node"] == "n1" and jobs["feed-1"]["state"] == "failed"
    assert jobs["other"]["node"] is None  # never ran: on no node, least of all the dashboard's own host
    assert set(jobs_of(board, "?q=feed")) == {"feed-1"}
    status, _headers, body = board.request("POST", "/api/jobs/feed-1/retry", token=TOKEN)
    assert status == 200 and json.loads(body)["retried"] == ["feed-1"]
    assert jobs_of(board)["feed-1"]["state"] == "pending"
    assert board.request("POST", "/api/jobs/other/cancel", token=TOKEN)[0] == 200
    assert jobs_of(board)["other"]["state"] == "cancelled"


def test_an_action_the_stopped_master_does_not_answer_is_unknown_not_refused(master_factory: Any, state_dir: Path,
                                                                             dashboards: Any) -> None:
    master = master_factory()
    master.submit("tests.apps.jobs:wait_forever", {}, key="forever")
    wait_for(lambda: master.jobs()["forever"]["state"] == "running", what="the job to run")
    board = dashboards("--state-dir", str(state_dir), env={"PHOENIX_DASHBOARD_TOKEN": TOKEN})
    master.signal(signal.SIGSTOP)
    try:
        status, _headers, body = board.request("POST", "/api/jobs/forever/cancel", token=TOKEN)
    finally:
        master.signal(signal.SIGCONT)
    assert status == 504, body
    assert json.loads(body)["error"] == ("the master did not answer within 5 s; the cancel may still happen: see "
                                         "`phoenix show forever`")
    wait_for(lambda: "dashboard_action" in board.log(), what="the action's audit line")
    (line,) = [line for line in board.log().splitlines() if "dashboard_action" in line]
    assert "result=unknown" in line and "status=504" in line, line
    # It was delivered: once the master runs again, the cancel happens.
    wait_for(lambda: master.jobs()["forever"]["state"] == "cancelled", what="the delivered cancel to happen")


def test_an_unknown_key_is_404_for_every_action(state_dir: Path, dashboards: Any) -> None:
    state_dir.mkdir(mode=0o700)
    Journal(state_dir / "journal.db").close()
    board = dashboards("--state-dir", str(state_dir), env={"PHOENIX_DASHBOARD_TOKEN": TOKEN})
    for action in ("retry", "cancel"):
        status, _headers, body = board.request("POST", f"/api/jobs/nosuch/{action}", token=TOKEN)
        assert (status, json.loads(body)["error"]) == (404, "no job with key 'nosuch'"), (action, body)
    assert [line.count("result=refused") for line in board.log().splitlines() if "dashboard_action" in line] == [1, 1]


def test_a_token_file_that_is_a_fifo_or_another_users_is_refused_in_one_line(state_dir: Path,
                                                                              tmp_path: Path) -> None:
    state_dir.mkdir(mode=0o700)
    Journal(state_dir / "journal.db").close()

    def refused(token_file: Path) -> str:
        # A process with a deadline: a FIFO's open used to wait for a writer forever.
        result = subprocess.run([PYTHON, "-m", "phoenix", "dashboard", "--state-dir", str(state_dir), "--port", "0",
                                 "--token-file", str(token_file)], cwd=REPO, capture_output=True, text=True,
                                timeout=20)
        assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
        return result.stderr

    fifo = tmp_path / "token.fifo"
    os.mkfifo(fifo, 0o600)
    assert "not a regular file" in refused(fifo)
    if os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root")
    theirs = tmp_path / "theirs"
    theirs.write_text(TOKEN + "\n")
    theirs.chmod(0o600)
    os.chown(theirs, 65534, 65534)
    assert "belongs to uid 65534, not to this user" in refused(theirs)


def test_a_half_sent_request_is_closed_after_the_header_timeout(state_dir: Path, dashboards: Any) -> None:
    import socket

    from phoenix.web.server import HEADER_TIMEOUT, MAX_HEADER_BYTES

    state_dir.mkdir(mode=0o700)
    Journal(state_dir / "journal.db").close()
    board = dashboards("--state-dir", str(state_dir))
    host, port = urllib.parse.urlsplit(board.url).hostname, urllib.parse.urlsplit(board.url).port
    with socket.create_connection((host, port), timeout=HEADER_TIMEOUT + 10) as silent, \
            socket.create_connection((host, port), timeout=HEADER_TIMEOUT + 10) as half:
        half.sendall(b"GET /api/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the blank line
        started = time.monotonic()
        # Closed by the dashboard (an empty read), not left open until our own timeout.
        assert half.recv(1024) == b"" and silent.recv(1024) == b""
        assert time.monotonic() - started < HEADER_TIMEOUT + 5
    # Headers growing past the bound, unfinished: refused at once, not buffered on.
    with socket.create_connection((host, port), timeout=HEADER_TIMEOUT - 1) as big:
        big.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * MAX_HEADER_BYTES)
        assert big.recv(1024).startswith(b"HTTP/1.1 400")
    assert board.get("/api/jobs")["total"] == 0  # a whole request is answered as ever
