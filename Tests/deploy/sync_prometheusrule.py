"""Writes deploy/kubernetes/monitoring/prometheusrule.yaml from deploy/prometheus/rules.yaml: the same groups, as
a PrometheusRule for the Prometheus operator. test_prometheus.py fails while the two differ.

    .venv/bin/python Tests/deploy/sync_prometheusrule.py
"""
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
RULES = ROOT / 'deploy/prometheus/rules.yaml'
OUT = ROOT / 'deploy/kubernetes/monitoring/prometheusrule.yaml'

HEADER = """\
# Written by Tests/deploy/sync_prometheusrule.py from deploy/prometheus/rules.yaml (its comments explain the rules):
# edit that file, then run the script. Tests/deploy fails while the two hold different groups.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: acm-serve
  labels:
    app.kubernetes.io/name: acm-serve
spec:
"""


def render():
    """The PrometheusRule's text: rules.yaml from its `groups:` line on, indented under spec."""
    lines = RULES.read_text().splitlines()
    start = lines.index('groups:')
    body = [('  ' + line) if line.strip() else '' for line in lines[start:]]
    return HEADER + '\n'.join(body) + '\n'


if __name__ == '__main__':
    OUT.write_text(render())
    print(f'wrote {OUT.relative_to(ROOT)}')
