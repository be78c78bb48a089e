"""Regenerate docs/timeline.png, the README's picture of `phoenix report --html`.

A real master runs a few dozen of the tests' jobs (finished, retried, hung and
killed, failed, crashed, one whose target is gone before it ran), is replaced
once by SIGUSR2 mid-run, and headless Chromium screenshots the page at the
height the page itself reports (its #check hook).

    python -m bench.timeline_demo [docs/timeline.png]
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from phoenix.store.sqlite import Journal
from tests.driver import REPO, Master, phoenix_cli

APP = "tests.apps.jobs:app"
CHROMIUM = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--force-device-scale-factor=1"]


def first_wave() -> list[tuple[str, object, str]]:
    jobs: list[tuple[str, object, str]] = []
    for i, seconds in enumerate([1.2, 0.6, 2.4, 0.9, 1.7, 0.4, 2.9, 1.1, 0.7, 1.9]):
        jobs.append(("tests.apps.jobs:sleep", {"s": seconds}, f"thumbnails/photo-{1830 + i}.jpg"))
    for i, fail_times in enumerate([1, 2, 1]):
        jobs.append(("tests.apps.jobs:flaky", {"fail_times": fail_times}, f"sync/account-{404 + i}"))
    for region in ("eu", "us"):
        jobs.append(("tests.apps.jobs:hang_first", {"s": 0.8}, f"report/weekly-{region}"))
    jobs.append(("tests.apps.jobs:always_fails", {}, "webhook/partner-acme"))
    jobs.append(("tests.apps.jobs:raises", {}, "import/batch-2026-11-29"))
    jobs.append(("tests.apps.jobs:segfault", {}, "render/pdf-8812"))
    jobs.append(("tests.apps.jobs:exit3", {}, "cleanup/tmp-files"))
    jobs.append(("tests.apps.jobs:sleep", {"s": 3.5},
                 "nightly-export/customer-7d1f3c2a-9b44-4e0e-a6f1-2f5e0c8d9a11/invoices-2026-11.csv.gz"))
    return jobs


def second_wave() -> list[tuple[str, object, str]]:
    jobs: list[tuple[str, object, str]] = []
    for i, seconds in enumerate([0.8, 1.5, 0.5, 2.2, 1.0, 0.6, 1.3]):
        jobs.append(("tests.apps.jobs:sleep", {"s": seconds}, f"invoices/2026-11-{i + 10:04d}"))
    jobs.append(("tests.apps.jobs:flaky", {"fail_times": 1}, "sync/account-512"))
    jobs.append(("tests.apps.jobs:hang_first", {"s": 0.5}, "report/weekly-apac"))
    return jobs


def record(state_dir: Path) -> None:
    state_dir.mkdir()
    with Journal(state_dir / "journal.db") as journal:  # written by an older release: its target is gone
        journal.submit("tests.apps.jobs:reindex_v1", "{}", "legacy/reindex-search")
    master = Master(state_dir, APP, "--workers", "6", cwd=REPO)
    try:
        master.start()
        first = first_wave()
        for target, params, key in first:
            master.submit(target, params, key=key)
        master.wait_log("spawn", count=12)
        master.signal(signal.SIGUSR2)
        master.wait_log("ready generation=2")
        second = second_wave()
        for target, params, key in second:
            master.submit(target, params, key=key)
        master.wait_jobs_done([key for _, _, key in first + second], timeout=60)
    finally:
        master.stop()


def screenshot(page: Path, output: Path, profile: Path) -> None:
    width = 1220
    dom = subprocess.run([*CHROMIUM, f"--user-data-dir={profile}", f"--window-size={width},800", "--dump-dom",
                          page.as_uri() + "#check"], capture_output=True, text=True, timeout=60, check=True).stdout
    found = re.search(r'data-page-height="([0-9.]+)"', dom)
    if found is None:
        sys.exit("the page's #check hook wrote no height: is this the timeline page?")
    height = int(float(found.group(1))) + 1
    subprocess.run([*CHROMIUM, f"--user-data-dir={profile}", f"--window-size={width},{height}",
                    f"--screenshot={output.resolve()}", page.as_uri()], capture_output=True, timeout=60, check=True)


def main() -> None:
    output = Path(sys.argv[1] if len(sys.argv) > 1 else REPO / "docs" / "timeline.png")
    if shutil.which("chromium") is None:
        sys.exit("needs Debian's chromium: apt-get install --no-install-recommends chromium")
    with tempfile.TemporaryDirectory(prefix="phoenix-timeline-") as scratch:
        state_dir = Path(scratch) / "state"
        record(state_dir)
        page = Path(scratch) / "timeline.html"
        result = phoenix_cli("report", "--html", str(page), state_dir=state_dir)
        if result.returncode != 0:
            sys.exit(result.stderr)
        screenshot(page, output, Path(scratch) / "profile")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
