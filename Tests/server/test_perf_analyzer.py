"""Triton's perf_analyzer, unmodified, drives acm-serve with JSON and with binary tensors."""
import os
import re

import pytest

from harness import metrics, parse_metrics
from perf import PERF_ANALYZER, command, input_shape, read_csv, run

LINES = re.compile(r'^\s*(Request count|Throughput|p50 latency|p99 latency|Avg latency|Concurrency: \d+).*$', re.M)


def request_counts(port):
    families = parse_metrics(metrics(port))
    count = lambda name: sum(s.value for f in families for s in f.samples
                             if s.name == name and s.labels.get('model') == 'vit-mixed')
    return count('acm_request_success_total'), count('acm_request_failure_total')


@pytest.mark.parametrize('tensor_format, input_data', [('json', 'zero'), ('binary', 'random')])
def test_perf_analyzer(server, tmp_path, tensor_format, input_data):
    """Should serve perf_analyzer for about 5 s at concurrency 4 without a failed request; it exits 0."""
    assert os.path.exists(PERF_ANALYZER), 'run scripts/setup: it installs perf_analyzer in .tools/'
    shape = input_shape(server.url, 'vit-mixed')
    report = str(tmp_path / 'report.csv')
    cmd = command(server.url, 'vit-mixed', shape, 4, tensor_format=tensor_format, input_data=input_data,
                  interval_ms=1500, csv_path=report)
    ok_before, failed_before = request_counts(server.port)
    code, output = run(cmd)
    print(' '.join(cmd))
    print('\n'.join(m.group(0).strip() for m in LINES.finditer(output)))
    assert code == 0, output[-3000:]
    [row] = read_csv(report)
    assert row['concurrency'] == 4 and row['throughput'] > 0 and 0 < row['p50_us'] <= row['p99_us']
    ok_after, failed_after = request_counts(server.port)
    assert failed_after == failed_before
    assert ok_after - ok_before >= row['throughput']  # at least a second's worth
