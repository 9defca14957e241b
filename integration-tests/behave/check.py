#!/usr/bin/env python3
"""Compares a behave run's results.tsv (summarize.py) with expected.tsv, the
scenarios known not to pass against pgwarden and why.

    check.py EXPECTED_TSV RESULTS_TSV [RERUN_RESULTS_TSV]

Every scenario must pass unless expected.tsv lists it: as `fails` (a
deliberate difference or a feature not built: it must fail, and passing is
reported so that the list is corrected) or as `race` (a known race: either
result is accepted). A scenario behave skipped is accepted (Patroni's own
version tags skip some, as they do for Patroni).

With RERUN_RESULTS_TSV (the feature files that had an unexpected failure,
run once more), a scenario's rerun result replaces its first one; the
scenarios that failed once and passed on the rerun are printed.

Prints the unexpected failures (and their first failing step), then the
feature files to rerun on a line of their own, `rerun: a b c`. Exit status:
0 when nothing unexpected failed, 1 otherwise, 2 on bad input.
"""

import csv
import sys

KINDS = ('fails', 'race')


def read_tsv(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f, delimiter='\t', quoting=csv.QUOTE_NONE))


def main(argv):
    if len(argv) not in (3, 4):
        print(__doc__, file=sys.stderr)
        return 2
    expected = {}
    for row in read_tsv(argv[1]):
        if row['expected'] not in KINDS:
            print('{0}: {1!r} is not one of {2}'.format(argv[1], row['expected'], ', '.join(KINDS)), file=sys.stderr)
            return 2
        expected[(row['file'], row['scenario'])] = row
    results = {(r['file'], r['scenario']): r for r in read_tsv(argv[2])}
    if not results:
        print('{0} holds no scenario: the run did not happen'.format(argv[2]), file=sys.stderr)
        return 1
    flaky = []
    if len(argv) == 4:
        for key, row in {(r['file'], r['scenario']): r for r in read_tsv(argv[3])}.items():
            if results.get(key, {}).get('result') == 'failed' and row['result'] == 'passed':
                flaky.append(key)
            results[key] = row

    unexpected, now_pass, accepted = [], [], []
    for key, row in results.items():
        known = expected.get(key)
        if row['result'] == 'failed' and known is None:
            unexpected.append(row)
        elif row['result'] == 'failed':
            accepted.append((row, known))
        elif row['result'] == 'passed' and known is not None and known['expected'] == 'fails':
            now_pass.append(row)
    missing = [key for key in expected if key not in results]

    passed = sum(1 for r in results.values() if r['result'] == 'passed')
    ran = sum(1 for r in results.values() if r['result'] != 'skipped')
    print('behave: {0} of {1} scenarios passed, {2} failed as expected.tsv says, {3} unexpectedly'.format(
        passed, ran, len(accepted), len(unexpected)))
    for row, known in accepted:
        print('  expected ({0}, {1}): {2} / {3}'.format(known['expected'], known['reason'], row['file'],
                                                        row['scenario']))
    for key in flaky:
        print('  failed, then passed on the rerun: {0} / {1}'.format(*key))
    for row in now_pass:
        print('  now passes (remove it from expected.tsv): {0} / {1}'.format(row['file'], row['scenario']))
    for key in missing:
        print('  not run (no such scenario, or its feature file was not run): {0} / {1}'.format(*key))
    for row in unexpected:
        print('  UNEXPECTED FAILURE: {0} / {1}: {2}: {3}'.format(row['file'], row['scenario'],
                                                                  row['first failing step'], row['error']))
    rerun = sorted({row['file'] for row in unexpected})
    print('rerun: ' + ' '.join(rerun))
    return 1 if unexpected else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
