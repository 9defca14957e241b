#!/usr/bin/env python3
"""Stands in for Patroni's `patroni.py` when Patroni's behave scenarios run
against pgwarden (integration-tests/behave/README.md).

The scenarios start one node as `python -m coverage run ... patroni.py
CONFIG` in the directory above `features/` and treat that one process as the
node: they send it SIGTERM to shut the node down, SIGKILL to kill it and
SIGSTOP/SIGCONT to hang it, and read its stdout as the node's log. pgwarden
runs a node as three services, so this wrapper starts `pgwarden-health`,
`pgwarden-agent` and `pgwarden-controller` with the same, untranslated config
file and makes them share the fate of this one process:

- SIGTERM and SIGINT go to the agent (which stops PostgreSQL and gives up the
  leader key, as Patroni does); once the agent has exited, the other two are
  stopped, and this process exits with the agent's status. The health API is
  stopped last because it is Patroni's REST API, which answers until Patroni
  exits.
- SIGHUP goes to all three (Patroni reloads its config on SIGHUP).
- SIGKILL cannot be caught: the services are started with a parent-death
  signal of SIGKILL, so they die with this process, as Patroni's REST API
  dies with Patroni. PostgreSQL is the agent's child and survives, as it
  survives a killed Patroni.
- SIGSTOP cannot be caught either: a small watcher process polls this
  process's state and stops the three services while this process is
  stopped, continuing them when it is continued (a hung Patroni process
  hangs its REST API thread too).
- If the agent exits on its own (a refused config, a duplicate name), the
  others are stopped and this process exits with the agent's status, as
  Patroni's process exits.

Nothing in the config or the arguments is changed.
"""

import ctypes
import os
import signal
import subprocess
import sys
import time

SERVICES = ('pgwarden-health', 'pgwarden-agent', 'pgwarden-controller')
PR_SET_PDEATHSIG = 1


def bin_dir():
    """Where the pgwarden binaries are: $PGWARDEN_BIN_DIR, else the workspace's
    target/debug when this file is still inside the repository."""
    configured = os.environ.get('PGWARDEN_BIN_DIR')
    if configured:
        return configured
    here = os.path.dirname(os.path.realpath(__file__))
    return os.path.join(here, '..', '..', 'target', 'debug')


def die_with_parent():
    """Runs in the child between fork and exec: SIGKILL when the parent dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def log(message):
    """One line in the node's log, in the shape of Patroni's default format
    (the scenarios only look for their own messages; this keeps the wrapper's
    lines recognisable)."""
    stamp = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime())
    sys.stderr.write('{0},000 INFO: behave wrapper: {1}\n'.format(stamp, message))
    sys.stderr.flush()


def process_state(pid):
    """The state letter of /proc/PID/stat, or None once the process is gone."""
    try:
        with open('/proc/{0}/stat'.format(pid)) as stat:
            return stat.read().rsplit(')', 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def freeze_watcher(parent, pids):
    """Stops `pids` while `parent` is stopped (SIGSTOP) and continues them when
    it runs again; returns when `parent` is gone."""
    frozen = False
    while True:
        state = process_state(parent)
        if state is None:
            return
        stopped = state in ('T', 't')
        if stopped != frozen:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGSTOP if stopped else signal.SIGCONT)
                except ProcessLookupError:
                    pass
            frozen = stopped
        time.sleep(0.05)


def stop(children, timeout):
    """SIGTERM to each running child, SIGKILL after `timeout` seconds."""
    for name, child in children.items():
        if child.poll() is None:
            log('stopping {0} (pid {1})'.format(name, child.pid))
            child.terminate()
    deadline = time.monotonic() + timeout
    for name, child in children.items():
        try:
            child.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log('{0} did not stop within {1} s: SIGKILL'.format(name, timeout))
            child.kill()
            child.wait()


def main(argv):
    if len(argv) == 4 and argv[1] == '--freeze-watcher':
        freeze_watcher(int(argv[2]), [int(pid) for pid in argv[3].split(',')])
        return 0
    if len(argv) != 2 or argv[1].startswith('-'):
        sys.stderr.write('usage: patroni.py CONFIG (the pgwarden behave wrapper)\n')
        return 2
    config = argv[1]
    binaries = bin_dir()

    children = {}
    pending = []

    def forward(signum, _frame):
        # Only the agent gets SIGTERM/SIGINT: the health API and the
        # controller are stopped once it has exited. A signal that arrives
        # before the agent runs is delivered as soon as it does.
        agent = children.get('pgwarden-agent')
        if agent is None:
            pending.append(signum)
            return
        targets = children.values() if signum == signal.SIGHUP else [agent]
        for child in targets:
            if child.poll() is None:
                child.send_signal(signum)

    # Installed before anything starts, so that no signal kills this process
    # (and with it, by the parent-death signal, the services) unforwarded.
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)

    for name in SERVICES:
        path = os.path.join(binaries, name)
        children[name] = subprocess.Popen([path, '--config', config], preexec_fn=die_with_parent)
        log('started {0} (pid {1}) with {2}'.format(name, children[name].pid, config))
    agent = children['pgwarden-agent']
    for signum in pending:
        forward(signum, None)

    watcher = subprocess.Popen(
        [sys.executable, os.path.realpath(__file__), '--freeze-watcher', str(os.getpid()),
         ','.join(str(child.pid) for child in children.values())],
        preexec_fn=die_with_parent)

    reported = set()
    while agent.poll() is None:
        for name, child in children.items():
            if child is not agent and child.poll() is not None and name not in reported:
                log('{0} exited with status {1}'.format(name, child.returncode))
                reported.add(name)
        time.sleep(0.2)

    log('pgwarden-agent exited with status {0}'.format(agent.returncode))
    stop({name: child for name, child in children.items() if child is not agent}, 10)
    watcher.kill()
    watcher.wait()
    return agent.returncode if agent.returncode >= 0 else 128 - agent.returncode


if __name__ == '__main__':
    sys.exit(main(sys.argv))
