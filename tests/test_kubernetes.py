"""The Kubernetes recipe of docs/containers.md, step by step, without a
cluster. deploy/kubernetes.yaml is read for the fields the recipe relies on;
then what the kubelet does to a pod is replayed with real processes, on the
manifest's timings at a tenth:

- a pod: `phoenix start` as PID 1 of its own PID namespace (as
  tests/faults/test_pid1.py runs it), its own state directory, the shared
  PostgreSQL store (the Secret's URL);
- a pod's end: the preStop hook run inside the pod's namespace (as the
  kubelet's exec does), then TERM to PID 1, then, once
  terminationGracePeriodSeconds have passed since the hook began, SIGKILL
  to PID 1: the kernel then kills every process of the namespace at once;
- a node lost: the pod's PID 1 SIGKILLed with no preStop and no TERM;
- a container restarted in its pod: PID 1 SIGKILLed, and a new one started
  on the same state directory (the pod's emptyDir) under the same node name.

Each time the job resumes from its last checkpoint, and no item of its work
is done twice before that checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from phoenix.rules import leases
from phoenix.store.postgres import PgStore
from tests import driver
from tests.conftest import PYTHON, REPO, Master, phoenix_cli, wait_for
from tests.test_readme import page_blocks

MANIFEST = REPO / "deploy" / "kubernetes.yaml"
GUIDE = REPO / "docs" / "containers.md"
SCALE = 0.1  # the manifest's seconds, a tenth as long here
LEASE_TTL = 2.0  # seconds; the manifest keeps the default (30)
STOP_EXIT = 2.0  # the stop budget's allowance for the master's exit, in the manifest's seconds


def pod_spec() -> dict[str, Any]:
    manifest = yaml.safe_load(MANIFEST.read_text())
    assert manifest["kind"] == "Deployment"
    spec: dict[str, Any] = manifest["spec"]["template"]["spec"]
    return spec


def phoenix_container(spec: dict[str, Any]) -> dict[str, Any]:
    [container] = [c for c in spec["containers"] if c["command"][:2] == ["phoenix", "start"]]
    return container


def env_values(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


class Budget:
    """The stop budget the manifest sets, in its own seconds."""

    def __init__(self, spec: dict[str, Any]) -> None:
        container = phoenix_container(spec)
        env = env_values(container)
        self.grace = float(spec["terminationGracePeriodSeconds"])
        self.hook = container["lifecycle"]["preStop"]["exec"]["command"]
        assert self.hook[:3] == ["phoenix", "stop", "--drain"] and self.hook[3] == "--timeout", self.hook
        self.drain = float(self.hook[4])
        self.kill_grace = float(env["PHOENIX_KILL_GRACE"])
        self.callback_timeout = float(env["PHOENIX_CALLBACK_TIMEOUT"])

    def needed(self) -> float:
        """The longest a drained pod takes to be gone: the drain, then the
        interrupted jobs' kill_grace, a callback of a job that finished in it,
        the master's exit."""
        return self.drain + self.kill_grace + self.callback_timeout + STOP_EXIT


def test_the_manifest_has_what_the_recipe_relies_on():
    spec = pod_spec()
    container = phoenix_container(spec)
    budget = Budget(spec)
    # The drain and the interrupted jobs' grace fit in the kubelet's grace period, which counts from the hook's start.
    assert budget.drain < budget.grace and budget.needed() <= budget.grace, vars(budget)
    # Phoenix is PID 1 of its container: not the pause process of a shared PID namespace.
    assert spec.get("shareProcessNamespace", False) is False
    # The store's URL (it holds a password) comes from a Secret, never from the manifest.
    [store] = [e for e in container["env"] if e["name"] == "PHOENIX_STORE"]
    assert set(store) == {"name", "valueFrom"} and store["valueFrom"]["secretKeyRef"]["key"]
    # Each pod's state directory is its own (a node of its own), on a volume that outlives a container restart.
    state_dir = env_values(container)["PHOENIX_STATE_DIR"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    [mount] = [m for m in container["volumeMounts"] if state_dir.startswith(m["mountPath"].rstrip("/") + "/")]
    assert "emptyDir" in volumes[mount["name"]]
    # Its image (deploy/Dockerfile) brings psycopg, which a postgresql:// store needs.
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(requirement.startswith("psycopg") for requirement in extras["postgres"])
    assert "RUN pip install '/src[postgres]'" in (REPO / "deploy" / "Dockerfile").read_text()
    # A rolling update starts the new pod before it stops an old one; a second replica recovers a lost node's jobs.
    rolling = yaml.safe_load(MANIFEST.read_text())["spec"]
    assert rolling["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert rolling["replicas"] >= 2


def test_the_guide_shows_the_manifest_that_is_tested():
    [block] = [b for b in page_blocks(GUIDE) if b.language == "yaml"]
    assert yaml.safe_load(block.text) == yaml.safe_load(MANIFEST.read_text())


# -- pods as PID namespaces ---------------------------------------------------------------

needs_namespaces = pytest.mark.skipif((reason := driver.namespaces_unavailable()) is not None, reason=reason or "")


class Pod(Master):
    """`phoenix start` as PID 1 of a PID namespace of its own, with the
    container's environment from the manifest (its seconds scaled). `init`
    is PID 1 as seen from here."""

    def __init__(self, name: str, tmp_path: Path, store: str, budget: Budget, lease_ttl: float) -> None:
        self.name = name
        self.container_env = {"PHOENIX_STORE": store, "PHOENIX_STATE_DIR": str(tmp_path / name),
                              "PHOENIX_KILL_GRACE": f"{budget.kill_grace * SCALE:g}",
                              "PHOENIX_CALLBACK_TIMEOUT": f"{budget.callback_timeout * SCALE:g}"}
        super().__init__(tmp_path / name, "tests.apps.pods:app", "--node", name, "--lease-ttl", f"{lease_ttl:g}",
                         env=self.container_env, log_dir=tmp_path, launcher=(*driver.UNSHARE, PYTHON, "-m", "phoenix"))

    def start(self, wait_ready: bool = True) -> "Pod":
        super().start(wait_ready)
        self.init = wait_for(lambda: _children(self.pid), 10.0, "unshare to fork the namespace's init")[0]
        self.namespace = os.readlink(f"/proc/{self.init}/ns/pid")
        return self

    def processes(self) -> list[int]:
        """Every process of the pod's namespace (pids as seen from here)."""
        found = []
        for entry in os.listdir("/proc"):
            try:
                if entry.isdigit() and os.readlink(f"/proc/{entry}/ns/pid") == self.namespace:
                    found.append(int(entry))
            except OSError:
                continue  # gone meanwhile
        return found

    def exec(self, *command: str) -> subprocess.Popen[str]:
        """`command` in the pod's namespace with the container's environment, as the kubelet runs an exec hook."""
        return subprocess.Popen(["nsenter", "--target", str(self.init), "--pid", "--mount", f"--wd={REPO}", "--",
                                 *command], env={**os.environ, **self.container_env}, cwd=REPO, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.init, signal.SIGKILL)  # the namespace dies with its init
            self.proc.wait(timeout)


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class Kubelet:
    """What the kubelet does to end a pod (deletion, a rolling update's
    step), in its order: the preStop hook, waited for up to the grace period
    (from the hook's start; here its drain's: see end); then the stop signal to PID 1, with what is
    left of the grace period, but at least 2 s (the kubelet's one-off
    extension: not scaled, it is the kubelet's, not the manifest's); then
    SIGKILL. The manifest's seconds are scaled."""

    MINIMUM_STOP_GRACE = 2.0

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.hook_exit: int | None = None  # the hook's exit status (negative: killed by that signal)
        self.hook_took = 0.0  # until it exited, or the kubelet stopped waiting for it
        self.hook_output = ""
        self.gone_after = 0.0
        self.killed = False  # the grace period ran out with processes of the pod left

    def end(self, pod: Pod, drain: float | None = None) -> None:
        """`drain`: the hook's --timeout (default: the manifest's), in the manifest's seconds."""
        grace = self.budget.grace * SCALE
        hook = pod.exec(PYTHON, "-m", *self.budget.hook[:4], f"{(drain or self.budget.drain) * SCALE:g}")
        # The grace period counts from the hook's start; here from the drain's, once the hook's interpreter
        # is up. That start is not scaled: 1-2 s on a loaded machine, a second of the manifest's 60 (nothing
        # there) but a third of its 6 s here, and the hook outlived the scaled grace period.
        pod.wait_log("drain running=", own=True, what="the preStop hook's drain to begin")
        began = time.monotonic()
        try:
            hook.wait(grace)
        except subprocess.TimeoutExpired:
            pass
        self.hook_took = time.monotonic() - began
        stop_grace = max(began + grace - time.monotonic(), self.MINIMUM_STOP_GRACE)
        if pod.proc is not None and pod.proc.poll() is None:
            os.kill(pod.init, signal.SIGTERM)  # the container's stop signal, to PID 1
        try:
            pod.proc.wait(stop_grace)  # type: ignore[union-attr]
        except subprocess.TimeoutExpired:
            self.killed = True
            os.kill(pod.init, signal.SIGKILL)  # every process of the namespace dies with it
            pod.proc.wait(10)  # type: ignore[union-attr]
        self.gone_after = time.monotonic() - began
        if hook.poll() is None:  # (it cannot outlive its namespace)
            hook.kill()
        self.hook_output = "".join(hook.communicate())
        self.hook_exit = hook.returncode


@pytest.fixture
def pods(tmp_path: Path, pg_url: str):
    started: list[Pod] = []
    budget = Budget(pod_spec())

    def make(name: str, lease_ttl: float = LEASE_TTL) -> Pod:
        pod = Pod(name, tmp_path, pg_url, budget, lease_ttl)
        started.append(pod)
        return pod.start()

    yield make
    for pod in started:
        pod.stop()


def show(store: str) -> dict[str, Any]:
    result = phoenix_cli("show", "crawl", "--json", "--store", store)
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def saved_cursor(store: str) -> int:
    """The crawl's checkpoint in the store (0 before the first), read directly: polled often."""
    with PgStore(store) as pg:
        job = pg.job_by_key("crawl")
    return json.loads(job["checkpoint"])["next"] if job and job["checkpoint"] else 0


def finished(store: str) -> dict[str, Any]:
    """`phoenix show crawl --json` once the crawl has finished (waited for in the store)."""
    def done() -> bool:
        with PgStore(store) as pg:
            job = pg.job_by_key("crawl")
        return job is not None and job["state"] == "finished"

    wait_for(done, timeout=30, what="the crawl to finish")
    return show(store)


def submit_crawl(store: str, tmp_path: Path, n: int) -> dict[str, Any]:
    params = {"n": n, "step": 0.02, "every": 5, "ledger": str(tmp_path / "ledger"), "starts": str(tmp_path / "starts")}
    result = phoenix_cli("submit", "tests.apps.pods:crawl", json.dumps(params), "--key", "crawl", "--store", store)
    assert result.returncode == 0, result.stderr
    return params


def items_done(params: dict[str, Any]) -> dict[int, list[int]]:
    """The items each attempt did, in order, from the job's ledger."""
    done: dict[int, list[int]] = {}
    for line in Path(params["ledger"]).read_text().splitlines():
        attempt, item = (int(x) for x in line.split())
        done.setdefault(attempt, []).append(item)
    return done


def starts(params: dict[str, Any]) -> list[tuple[int, int]]:
    """(attempt, the item it resumed from) of each attempt, as the job wrote them."""
    return [(int(a), int(s)) for a, s in (line.split() for line in Path(params["starts"]).read_text().splitlines())]


def resumed_on_the_new_pod(store: str, params: dict[str, Any]) -> None:
    """The old pod's attempt ended politely (it saved its cursor on
    Interrupted), no retry used; the new pod's resumed there; each item was done once."""
    stopped = show(store)
    first = stopped["attempt_list"][0]
    assert (first["node"], first["outcome"]) == ("old", "interrupted"), first
    assert first["reason"] == "stopped; it ended on phoenix.Interrupted" and stopped["failures"] == 0
    report = finished(store)
    resumed_from = items_done(params)[1][-1] + 1  # the old pod's last item done, and checkpointed on Interrupted
    assert [(x["node"], x["outcome"]) for x in report["attempt_list"]] == [("old", "interrupted"), ("new", "finished")]
    assert starts(params) == [(1, 0), (2, resumed_from)] and report["result"] == {"started_at": resumed_from}
    assert items_done(params) == {1: list(range(resumed_from)), 2: list(range(resumed_from, params["n"]))}


@needs_namespaces
def test_a_pod_ended_by_the_kubelet_drains_then_its_job_resumes_on_the_new_pod(pods, pg_url, tmp_path):
    budget = Budget(pod_spec())
    old = pods("old")
    params = submit_crawl(pg_url, tmp_path, n=1000)  # 20 s of work: still running when the drain ends
    wait_for(lambda: saved_cursor(pg_url) >= 5, what="the crawl's first checkpoint")
    new = pods("new")  # maxSurge: the new pod runs before the old one is ended

    kubelet = Kubelet(budget)
    kubelet.end(old)

    # The hook drained for its --timeout, then interrupted the job, which saved its cursor within kill_grace.
    drain, kill_grace = budget.drain * SCALE, budget.kill_grace * SCALE
    assert drain <= kubelet.hook_took < drain + kill_grace + 1.0, kubelet.hook_took
    assert kubelet.hook_exit == 0, (kubelet.hook_exit, kubelet.hook_output)  # not killed with the namespace
    assert not kubelet.killed and not old.processes(), "the grace period ran out with processes of the pod left"
    assert old.proc is not None and old.proc.returncode == 0, old.log()[-3000:]
    # Its stop woke the new pod (a NOTIFY), which took the job at once, not at its next look for due jobs.
    wait_for(lambda: len(starts(params)) == 2, timeout=1.0, what="the job to run on the new pod")
    resumed_on_the_new_pod(pg_url, params)
    assert new.proc is not None and new.proc.poll() is None


@needs_namespaces
def test_a_drain_longer_than_the_grace_period_is_cut_short_by_the_kubelets_term(pods, pg_url, tmp_path):
    """The hook's --timeout past terminationGracePeriodSeconds: the kubelet
    stops waiting for it at the grace period and TERMs PID 1, which
    interrupts the job at once; the job has until the kubelet's KILL, 2 s
    later, to save its place, and does."""
    budget = Budget(pod_spec())
    old = pods("old")
    params = submit_crawl(pg_url, tmp_path, n=1000)
    wait_for(lambda: saved_cursor(pg_url) >= 5, what="the crawl's first checkpoint")
    pods("new")

    kubelet = Kubelet(budget)
    kubelet.end(old, drain=2 * budget.grace)

    grace = budget.grace * SCALE
    assert kubelet.hook_took >= grace and kubelet.gone_after < grace + Kubelet.MINIMUM_STOP_GRACE, vars(kubelet)
    assert not kubelet.killed and not old.processes()
    assert kubelet.hook_exit == 0, (kubelet.hook_exit, kubelet.hook_output)  # it learnt how the master ended
    assert "stop mode=term" in old.log()
    resumed_on_the_new_pod(pg_url, params)


@needs_namespaces
def test_a_container_restarted_in_its_pod_resumes_its_job_without_waiting_for_its_lease(pods, pg_url, tmp_path):
    """The master SIGKILLed (its container OOM-killed, say) and the container
    restarted in the same pod: the same host name and the same emptyDir state
    directory, so the same node, which takes its own jobs back at its start."""
    ttl = 30.0  # the manifest's (the default): the job must not wait for it
    pod = pods("pod", lease_ttl=ttl)
    params = submit_crawl(pg_url, tmp_path, n=400)
    wait_for(lambda: saved_cursor(pg_url) >= 15, what="a few checkpoints")
    os.kill(pod.init, signal.SIGKILL)
    killed_at = time.monotonic()
    pod.proc.wait(10)  # type: ignore[union-attr]
    checkpoint = saved_cursor(pg_url)

    pods("pod", lease_ttl=ttl)  # the kubelet restarts the container
    wait_for(lambda: len(starts(params)) == 2, timeout=20, what="the crawl to run again in the restarted container")
    assert time.monotonic() - killed_at < ttl / 2
    assert starts(params)[1] == (2, checkpoint)
    report = finished(pg_url)
    # Its process ended with no master to watch it: `lost`, a retry used (as a crash is), found by the node's next
    # master at its start rather than by another after the lease.
    assert [(x["node"], x["outcome"]) for x in report["attempt_list"]] == [("pod", "lost"), ("pod", "finished")]
    assert report["failures"] == 1 and report["result"] == {"started_at": checkpoint}


@needs_namespaces
def test_a_pod_lost_with_its_node_resumes_on_another_pod_after_the_lease_runs_out(pods, pg_url, tmp_path):
    lost = pods("lost")
    params = submit_crawl(pg_url, tmp_path, n=400)
    other = pods("other")
    wait_for(lambda: saved_cursor(pg_url) >= 15, what="a few checkpoints")

    os.kill(lost.init, signal.SIGKILL)  # no preStop, no TERM: every process of the pod dies at once
    killed_at = time.monotonic()
    lost.proc.wait(10)  # type: ignore[union-attr]
    assert not lost.processes()
    checkpoint = saved_cursor(pg_url)  # the last one a master acknowledged: nothing more comes

    wait_for(lambda: len(starts(params)) == 2, timeout=30, what="the crawl to run again on the other pod")
    recovered_after = time.monotonic() - killed_at
    report = finished(pg_url)
    resumed = starts(params)[1]
    assert resumed == (2, checkpoint) and report["result"] == {"started_at": checkpoint}
    assert [(x["node"], x["outcome"]) for x in report["attempt_list"]] == [("lost", "lost"), ("other", "finished")]
    done = items_done(params)
    assert done[1] == list(range(done[1][-1] + 1)) and done[2] == list(range(checkpoint, 400))
    # Done twice: only what the lost pod did after its last checkpoint (at most a checkpoint's worth of items).
    twice = sorted(set(done[1]) & set(done[2]))
    assert twice == list(range(checkpoint, done[1][-1] + 1)) and len(twice) <= params["every"], twice
    # Recovered by the other pod once the lost pod's lease expired (at most a renewal period after the kill)
    # and the grace passed, at the other pod's next round (every renewal period): docs/many-hosts.md.
    times = leases.lease_times(LEASE_TTL, Budget(pod_spec()).kill_grace * SCALE)
    earliest = times.ttl - times.renew_every + times.grace
    assert earliest <= recovered_after < times.ttl + times.grace + times.renew_every + 2.0, recovered_after
    assert "recovered masters=lost" in other.log()
