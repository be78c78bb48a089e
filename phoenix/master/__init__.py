"""The master: its event loop (`arbiter`) and the parts it wires together: spawning, heartbeat
intake, hang detection, reaping, recording outcomes, callbacks, leases, and the hand-over on USR2."""
