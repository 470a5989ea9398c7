"""wildboar-supervisor: the launcher that binds, drops privileges and watches the workers.

Owns: the listening sockets (bound here as root, or inherited from systemd socket activation),
the privilege drop, the worker processes (spawn, reap, restart with back-off, kill, drain) and
the conversation with systemd (sd_notify).
Must not know: anything of SMTP or of the ``wildboar`` package; it imports only the standard
library, ``sdnotify`` and ``python-systemd``. Workers are any command that speaks the control
channel of docs/architecture.md ("Supervisor and workers: the control channel").
SECURITY: the only code of the project that may run as root, and only until the sockets are
bound: it then drops to an unprivileged user for good, before it spawns or reads anything from
a worker. Workers are not trusted: their messages are size-limited and validated, and a worker
that misbehaves is killed, never believed.

Modules: ``options`` (command line), ``sockets`` (bind or inherit), ``privileges`` (the drop),
``control`` (the socketpair protocol), ``workers`` (one worker process), ``arbiter`` (the main
loop), ``signals`` (recording signals), ``notify`` (sd_notify), ``log`` (JSON lines),
``exits`` (exit statuses).
"""
