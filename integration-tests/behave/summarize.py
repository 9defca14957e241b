#!/usr/bin/env python3
"""Reads behave's JSON reports (one per feature file) and writes one line per
scenario to a TSV file: feature, scenario, result, and for a failed scenario
its first failing step and that step's error, each on one line, and the
feature file (the report's name without .json). Prints the
passed/failed/skipped counts per feature and in total.

    summarize.py RESULTS_TSV REPORT_JSON...
"""

import json
import sys


def one_line(text, limit=400):
    """`text` (a string or behave's list of lines) as one line for a TSV cell."""
    if isinstance(text, list):
        text = ' '.join(str(part) for part in text)
    text = ' '.join(str(text or '').replace('\t', ' ').split())
    return text if len(text) <= limit else text[:limit - 3] + '...'


def exception_after(log_lines, step_text):
    """The exception line behave printed under `step_text` in its plain output
    (its JSON report keeps no text for a step that raised instead of failing
    an assertion)."""
    for i, line in enumerate(log_lines):
        if line.strip().startswith(step_text + ' ...') and ' error in ' in line:
            found = ''
            for following in log_lines[i + 1:]:
                if following.startswith('  Scenario') or ' ... ' in following:
                    break
                if following.strip() and not following[0].isspace() and not following.startswith(
                        ('Traceback', 'The above exception', 'During handling')):
                    found = following
            return found
    return ''


def scenario_rows(report):
    """(feature, scenario, result, step, error) for each scenario of a report."""
    try:
        with open(report) as f:
            features = json.load(f)
    except (OSError, ValueError):
        features = []
    try:
        with open(report.rsplit('.', 1)[0] + '.log') as f:
            log_lines = f.read().splitlines()
    except OSError:
        log_lines = []
    if not features:
        name = report.rsplit('/', 1)[-1].rsplit('.', 1)[0]
        yield name, '(every scenario)', 'failed', '', 'no report: behave stopped before running the feature (see its log)'
        return
    for feature in features:
        for element in feature.get('elements', []):
            if element.get('type', 'scenario') != 'scenario':
                continue
            result = element.get('status', 'untested')
            step_text, error = '', ''
            if result in ('failed', 'error'):
                for step in element.get('steps', []):
                    step_result = step.get('result', {})
                    if step_result.get('status') in ('failed', 'error', 'undefined'):
                        step_text = '{0} {1}'.format(step.get('keyword', ''), step.get('name', '')).strip()
                        error = step_result.get('error_message') or exception_after(log_lines, step_text) \
                            or step_result.get('status')
                        break
                result = 'failed'
            elif result != 'passed':
                result = 'skipped'
            yield feature.get('name', ''), element.get('name', ''), result, one_line(step_text), one_line(error)


def main(argv):
    results, reports = argv[1], argv[2:]
    counts = {}
    with open(results, 'w') as out:
        out.write('feature\tscenario\tresult\tfirst failing step\terror\tfile\n')
        for report in reports:
            file = report.rsplit('/', 1)[-1].rsplit('.', 1)[0]
            for row in scenario_rows(report):
                out.write('\t'.join(row + (file,)) + '\n')
                per_feature = counts.setdefault(row[0], {'passed': 0, 'failed': 0, 'skipped': 0})
                per_feature[row[2]] += 1
    total = {'passed': 0, 'failed': 0, 'skipped': 0}
    width = max([len(name) for name in counts] + [7])
    print('{0:<{w}}  passed  failed  skipped'.format('feature', w=width))
    for name, c in counts.items():
        print('{0:<{w}}  {1:>6}  {2:>6}  {3:>7}'.format(name, c['passed'], c['failed'], c['skipped'], w=width))
        for key in total:
            total[key] += c[key]
    print('{0:<{w}}  {1:>6}  {2:>6}  {3:>7}'.format('total', total['passed'], total['failed'], total['skipped'],
                                                    w=width))
    ran = total['passed'] + total['failed']
    print('passed {0} of {1} scenarios ({2} skipped); one line per scenario in {3}'.format(
        total['passed'], ran, total['skipped'], results))
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
