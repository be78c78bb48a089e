"""Facts of the operating system: signals, /proc, pidfiles, sockets, paths, clocks, systemd.

Nothing here knows about jobs or the store; everything above may use it.
"""
