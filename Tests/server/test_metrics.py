"""GET /metrics: Prometheus text that promtool accepts, every series acm_-prefixed, counters that count."""
import subprocess

from harness import batch_size_histogram, infer, metrics, parse_metrics, request, sample_value

# The series these tests read (docs/metrics.md).
SUCCESS = 'acm_request_success_total'
FAILURE = 'acm_request_failure_total'


def test_metrics_parse_and_lint(server, mixed):
    """Should serve text that prometheus_client parses and `promtool check metrics` passes, every family acm_-prefixed."""
    assert infer(server.port, 'vit-mixed', mixed['input'][:1])[0] == 200
    text = metrics(server.port)
    families = parse_metrics(text)
    assert families
    for f in families:
        assert f.name.startswith('acm_'), f.name
        assert f.documentation, f'{f.name} has no HELP'
    lint = subprocess.run(['promtool', 'check', 'metrics'], input=text, capture_output=True, text=True, timeout=30)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_content_type(server):
    """Should label the answer as the text exposition format 0.0.4."""
    status, headers, _ = request(server.port, 'GET', '/metrics')
    assert status == 200
    assert headers['content-type'].startswith('text/plain')
    assert 'version=0.0.4' in headers['content-type']


def test_success_counter_counts_requests(server, mixed):
    """Should count each answered inference request once in acm_request_success_total, per model."""
    before = parse_metrics(metrics(server.port))
    n = 7
    for i in range(n):
        assert infer(server.port, 'vit-mixed', mixed['input'][i % 4:i % 4 + 1], budget=0.5 if i % 2 else None)[0] == 200
    after = parse_metrics(metrics(server.port))
    assert sample_value(after, SUCCESS, model='vit-mixed') - sample_value(before, SUCCESS, model='vit-mixed') == n
    assert sample_value(after, SUCCESS, model='vit-bias') == sample_value(before, SUCCESS, model='vit-bias')


def test_failure_counter_counts_errors(server, mixed):
    """Should count a refused request (bad budget) in acm_request_failure_total of its model."""
    def failures(families):
        return sum(s.value for f in families for s in f.samples
                   if s.name == FAILURE and s.labels.get('model') == 'vit-mixed')

    before = failures(parse_metrics(metrics(server.port)))
    assert infer(server.port, 'vit-mixed', mixed['input'][:1], budget=1.5)[0] == 400
    after = failures(parse_metrics(metrics(server.port)))
    assert after - before == 1


def test_batch_size_histogram(server, mixed):
    """Should keep a batch-size histogram per model that counts every executed batch."""
    before = batch_size_histogram(parse_metrics(metrics(server.port)), 'vit-mixed')
    assert infer(server.port, 'vit-mixed', mixed['input'])[0] == 200  # one request of 4 images: one batch of 4
    buckets, count, total = batch_size_histogram(parse_metrics(metrics(server.port)), 'vit-mixed')
    assert count is not None and total is not None and buckets
    assert count - (before[1] or 0) == 1
    assert total - (before[2] or 0) == 4
    assert buckets[float('inf')] == count
