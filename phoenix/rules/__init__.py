"""Pure decisions: job and master states, retry policy, liveness, outcomes, leases, durations.

No I/O and no clock reads: each rule is given what it decides on, so it is tested in-process.
"""
