"""What crosses a socket: the heartbeat protocol (child <-> master) and the control protocol
(commands <-> master). Formats and limits only; no decisions."""
