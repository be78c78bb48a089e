"""No more job slots than the open-file limit carries: a child the master
cannot watch for want of a descriptor would be killed as silent, or never
started. Pure arithmetic in rules/shortage.py (fds_needed, slots_that_fit);
the limit itself is read and raised here, once, at start."""

from __future__ import annotations

import logging
import resource

from phoenix import log
from phoenix.config import ConfigError
from phoenix.rules.shortage import fds_needed, slots_that_fit


class SlotLimit:
    def __init__(self, wanted: int) -> None:
        self.cap = wanted  # the most slots the open-file limit carries (known once fit() ran)

    def fit(self, wanted: int) -> int:
        """At start: raise the open-file limit, and the slots it carries of
        the `wanted`; too few for one slot: refuse to start (ConfigError)."""
        limit = _raise_fd_limit()
        self.cap = slots_that_fit(limit)
        if self.cap == 0 and wanted > 0:
            raise ConfigError(f"the open-file limit ({limit}) leaves no room for a job slot: a master needs "
                              f"{fds_needed(1)} for one, {fds_needed(wanted)} for workers = {wanted}; raise "
                              "the hard limit (ulimit -Hn, systemd LimitNOFILE=, docker run --ulimit nofile=)")
        return self.allow(wanted)

    def allow(self, wanted: int) -> int:
        """The slots of the `wanted` (config, reload, TTIN/TTOU) the limit carries; said when fewer."""
        if wanted > self.cap:
            log.event(logging.WARNING, "workers_lowered", asked=wanted, workers=self.cap,
                      reason=f"the open-file limit allows {self.cap} slots",
                      fix=f"raise the hard limit on open files to {fds_needed(wanted)} (ulimit -Hn, systemd "
                          "LimitNOFILE=, docker run --ulimit nofile=)")
        return max(0, min(wanted, self.cap))


def _raise_fd_limit() -> int:
    """Raise the soft open-file limit to the hard one (adopted children each
    hold a pidfd; 1,000 of them outgrow the usual soft limit of 1,024), and
    return the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # (never infinite: the kernel caps it at nr_open)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard
