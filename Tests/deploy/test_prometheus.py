"""deploy/prometheus/rules.yaml and deploy/grafana/acm-serve.json: the rules pass `promtool check rules` and their unit
tests (rules_test.yaml), every dashboard query parses as PromQL (each is checked by promtool as a recording rule) and
plots a recorded series, and every acm_* name in the rules, the dashboard and the prometheus-adapter values is one the
server exports (docs/metrics.md, cross-checked with Metrics.swift)."""
import json
import pathlib
import re
import subprocess

import pytest
import yaml

from deployfiles import DEPLOY, exported_metrics, load_doc, series_names, tool

RULES = DEPLOY / 'prometheus/rules.yaml'
DASHBOARD = DEPLOY / 'grafana/acm-serve.json'
ADAPTER = DEPLOY / 'kubernetes/prometheus-adapter-values.yaml'
RULES_TEST = pathlib.Path(__file__).with_name('rules_test.yaml')

# What a Grafana variable stands for when a query is checked.
VARIABLES = {'$model': '.+'}


def promtool(*args):
    return subprocess.run([tool('promtool'), *args], capture_output=True, text=True)


def rules():
    return [r for g in load_doc(RULES)['groups'] for r in g['rules']]


def recorded():
    return {r['record'] for r in rules() if 'record' in r}


def dashboard():
    return json.loads(DASHBOARD.read_text())


def targets():
    """(panel title, expr) of every query in the dashboard."""
    return [(p['title'], t['expr']) for p in dashboard()['panels'] for t in p.get('targets', [])]


def substituted(expr):
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    assert '$' not in expr, f'unknown variable in {expr}'
    return expr


def metric_names(expr):
    """The metric names a PromQL expression selects: its identifiers but function names (followed by `(`), keywords,
    label names and values, durations and numbers."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # string literals (label values, regexes)
    expr = re.sub(r'\{[^}]*\}', '{}', expr)  # label matchers
    expr = re.sub(r'\[[^\]]*\]', '', expr)  # range durations
    expr = re.sub(r'\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)', '', expr)  # label lists
    keywords = {'and', 'or', 'unless', 'by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'bool',
                'offset', 'Inf', 'NaN', 'inf', 'nan'}
    names = set()
    for m in re.finditer(r'[0-9][0-9a-zA-Z_.]*|[a-zA-Z_:][a-zA-Z0-9_:]*', expr):
        token, rest = m.group(0), expr[m.end():].lstrip()
        if token[0].isdigit() or token in keywords or rest.startswith('('):
            continue
        names.add(token)
    return names


def write_rules(path, exprs):
    """A rule file with each expr as a recording rule, for promtool to parse."""
    group = {'name': 'check', 'rules': [{'record': f'check:expr_{i}', 'expr': e} for i, e in enumerate(exprs)]}
    path.write_text(yaml.safe_dump({'groups': [group]}))
    return path


def test_rules_pass_promtool():
    """Should pass `promtool check rules`."""
    result = promtool('check', 'rules', str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f'SUCCESS: {len(rules())} rules found' in result.stdout


def test_rules_unit_tests_pass():
    """Should fire each alert on the series that should fire it and compute the dashboard's series (rules_test.yaml)."""
    result = promtool('test', 'rules', str(RULES_TEST))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_unit_tests_fail_on_a_wrong_threshold(tmp_path):
    """Should fail the unit tests when the image queue threshold moves above the alert's series (they can fail)."""
    text = RULES.read_text()
    assert text.count('> 204') == 1
    (tmp_path / 'deploy/prometheus').mkdir(parents=True)
    (tmp_path / 'deploy/prometheus/rules.yaml').write_text(text.replace('> 204', '> 240'))
    (tmp_path / 'Tests/deploy').mkdir(parents=True)
    (tmp_path / 'Tests/deploy/rules_test.yaml').write_text(RULES_TEST.read_text())
    result = promtool('test', 'rules', str(tmp_path / 'Tests/deploy/rules_test.yaml'))
    assert result.returncode != 0 and 'ACMServeQueueNearFull' in result.stdout + result.stderr


def test_dashboard_queries_parse(tmp_path):
    """Should parse every panel query, variables substituted, as PromQL (promtool checks them as recording rules)."""
    exprs = [substituted(e) for _, e in targets()]
    assert len(exprs) >= 10
    result = promtool('check', 'rules', str(write_rules(tmp_path / 'dashboard.yaml', exprs)))
    assert result.returncode == 0, result.stdout + result.stderr


def test_query_check_rejects_a_broken_query(tmp_path):
    """Should fail on a query that is not PromQL (the parse check can fail)."""
    result = promtool('check', 'rules', str(write_rules(tmp_path / 'bad.yaml', ['sum by (model (rate(x[5m]))'])))
    assert result.returncode != 0


def test_dashboard_plots_recorded_series_only():
    """Should plot only series the rules record, each filtered by the model variable where it has a model label."""
    known = recorded()
    for title, expr in targets():
        names = metric_names(expr)
        assert names and names <= known, (title, names - known)
        if not all(n.startswith('reason:') for n in names):
            assert 'model=~"$model"' in expr, (title, expr)


def test_every_acm_name_is_one_the_server_exports(tmp_path):
    """Should use, in the rules, the dashboard's queries and variables and the adapter values, only series the server
    exports (counters, gauges, and histograms' _bucket, _sum and _count)."""
    exported = series_names(exported_metrics())
    used = {}
    for rule in rules():
        for name in metric_names(rule['expr']):
            used.setdefault(name, f"rule {rule.get('record') or rule.get('alert')}")
    for title, expr in targets():
        for name in metric_names(expr):
            used.setdefault(name, f'panel {title}')
    for variable in dashboard()['templating']['list']:
        if variable['type'] == 'query':
            for name in re.findall(r'label_values\((\w+)', variable['definition']):
                used.setdefault(name, f"variable {variable['name']}")
    adapter = load_doc(ADAPTER)
    for rule in adapter['rules']['custom']:
        for name in metric_names(rule['seriesQuery']):
            used.setdefault(name, 'prometheus-adapter seriesQuery')
    acm = {n: where for n, where in used.items() if n.startswith('acm_')}
    assert acm, 'no acm_* series found'
    unknown = {n: where for n, where in acm.items() if n not in exported}
    assert not unknown, unknown
    # Everything else is a series the rules record.
    others = {n: where for n, where in used.items() if not n.startswith('acm_') and n not in recorded()}
    assert not others, others
    # The name check itself: a misspelt series is caught.
    assert 'acm_pending_request' not in exported


def test_adapter_query_parses(tmp_path):
    """Should parse the prometheus-adapter metricsQuery as PromQL once the adapter fills in its templates."""
    [rule] = load_doc(ADAPTER)['rules']['custom']
    query = (rule['metricsQuery'].replace('<<.Series>>', 'acm_pending_requests')
             .replace('<<.LabelMatchers>>', 'namespace="default",pod=~"acm-serve-.*"').replace('<<.GroupBy>>', 'pod'))
    assert '<<' not in query
    result = promtool('check', 'rules', str(write_rules(tmp_path / 'adapter.yaml', [query, rule['seriesQuery']])))
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_rule_holds_the_same_groups():
    """Should give the Prometheus operator (monitoring/prometheusrule.yaml) exactly rules.yaml's groups, as
    sync_prometheusrule.py writes them."""
    import sync_prometheusrule
    rule = load_doc(DEPLOY / 'kubernetes/monitoring/prometheusrule.yaml')
    assert rule['spec']['groups'] == load_doc(RULES)['groups']
    assert sync_prometheusrule.OUT.read_text() == sync_prometheusrule.render(), 'run Tests/deploy/sync_prometheusrule.py'


@pytest.mark.parametrize('title', ['Requests and errors', 'Latency p50 and p99', 'Queue depth', 'Batch size',
                                   'Compute fraction by budget', 'Learners by layer and k'])
def test_dashboard_has_the_panels(title):
    """Should have each panel the issue asks for, with at least one query, on the datasource variable."""
    [panel] = [p for p in dashboard()['panels'] if p['title'] == title]
    assert panel['targets'] and panel['datasource'] == {'type': 'prometheus', 'uid': '${datasource}'}
    assert all(t['datasource'] == panel['datasource'] for t in panel['targets'])


def test_dashboard_variables():
    """Should take the Prometheus datasource and the model (several, or all) as variables."""
    variables = {v['name']: v for v in dashboard()['templating']['list']}
    assert variables['datasource']['type'] == 'datasource' and variables['datasource']['query'] == 'prometheus'
    model = variables['model']
    assert model['type'] == 'query' and model['multi'] and model['includeAll']
    assert model['datasource'] == {'type': 'prometheus', 'uid': '${datasource}'}
    ids = [p['id'] for p in dashboard()['panels']]
    assert len(ids) == len(set(ids))
