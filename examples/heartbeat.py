"""The Ruby prototype's demo, line for line in Python: three children, one of
which hangs on its first attempt (SIGSTOP: no more beats), is killed after
heartbeat_timeout and re-run with the same parameters; every job completes.

    python examples/heartbeat.py            # about 30 s
"""

import os
import signal
import time

import phoenix


class MasterProcess(phoenix.HeartbeatParent):
    pass


class ChildProcess(phoenix.HeartbeatChild):
    def long_process(self, params):
        self.heartbeat_logger.info(f"Process: {os.getpid()}\tParameters: {params}")
        if params == 1 and self.attempt == 1:
            os.kill(os.getpid(), signal.SIGSTOP)  # hang: the heartbeat thread stops too
        time.sleep(int(os.environ.get("EXAMPLE_SLEEP", "12")))


if __name__ == "__main__":
    f = MasterProcess(heartbeat_timeout=5)
    for i in range(3):
        f.spawn_and_perform(ChildProcess, "long_process", i)
    raise SystemExit(f.monitor())  # returns when every job has finished or failed
