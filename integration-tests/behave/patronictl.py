#!/usr/bin/env python3
"""Stands in for Patroni's `patronictl.py` when Patroni's behave scenarios run
against pgwarden (integration-tests/behave/README.md): runs `pgwardenctl`
with the same arguments and environment, untranslated, in place of this
process, so its output and exit status are what the scenario sees."""

import os
import sys


def main(argv):
    configured = os.environ.get('PGWARDEN_BIN_DIR')
    if not configured:
        here = os.path.dirname(os.path.realpath(__file__))
        configured = os.path.join(here, '..', '..', 'target', 'debug')
    ctl = os.path.join(configured, 'pgwardenctl')
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(ctl, [ctl] + argv[1:])


if __name__ == '__main__':
    main(sys.argv)
