"""`python -m orchestrator_dev.foreground COMMAND...`: how `make run` runs honcho, so that
Ctrl-C stops it cleanly.

Ctrl-C sends SIGINT to the terminal's foreground process group, which under make is make's
own. make then reports the target as interrupted and exits 130, however well the command
stopped. So, on a terminal, COMMAND runs in a process group of its own that holds the
terminal: Ctrl-C reaches it alone, it stops its processes and ends, the terminal goes back
to make's group, and this exits 0. A SIGTERM or SIGHUP sent to make's group (make passes a
SIGTERM on to its recipe) is passed on to COMMAND as SIGTERM.

Without a terminal, or in the background, COMMAND simply replaces this process, in make's
process group, as a plain recipe would.
"""

import os
import signal
import subprocess
import sys

# How honcho ends when it was told to stop: a stop asked for, not a failure.
STOPPED = {0, 128 + signal.SIGINT, 128 + signal.SIGTERM}


def foreground_terminal() -> int | None:
    """A descriptor of the controlling terminal, if this process's group is its foreground."""
    try:
        tty = os.open("/dev/tty", os.O_RDWR | os.O_CLOEXEC)
    except OSError:  # no controlling terminal
        return None
    try:
        if os.tcgetpgrp(tty) == os.getpgrp():
            return tty
    except OSError:
        pass
    os.close(tty)
    return None


def run_in_foreground(command: list[str], tty: int) -> int:
    child = None
    stop_asked = []

    def pass_on(signum, frame):
        # Once: make passes on the SIGTERM that its group got too, and a second one would
        # have honcho send its processes a second SIGTERM.
        if not stop_asked:
            stop_asked.append(signum)
            if child is not None:
                child.send_signal(signal.SIGTERM)

    # Before the child starts, so that a stop asked for meanwhile is not lost.
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(signum, pass_on)
    child = subprocess.Popen(command, process_group=0)
    os.tcsetpgrp(tty, child.pid)
    if stop_asked:
        child.send_signal(signal.SIGTERM)
    status = child.wait()
    # Take the terminal back for make's group; from the background that raises SIGTTOU.
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    os.tcsetpgrp(tty, os.getpgrp())
    if status in STOPPED:
        return 0
    return 128 - status if status < 0 else status  # killed by a signal: as a shell reports it


def main(command: list[str]) -> int:
    if not command:
        sys.exit("usage: python -m orchestrator_dev.foreground COMMAND [ARGUMENT...]")
    tty = foreground_terminal()
    if tty is None:
        os.execvp(command[0], command)
    return run_in_foreground(command, tty)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
