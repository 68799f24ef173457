"""Shared helpers of the deployment files' checks (Tests/deploy): paths, YAML loading, the tools scripts/setup
installs (.venv's kubernetes-validate, hadolint, kubectl and the Prometheus operator's models; .venv-kserve's KServe
SDK; Debian's promtool), and the names the server reads and exports, taken from its sources."""
import os
import pathlib
import re
import shutil

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = ROOT / 'deploy'
VENV_BIN = ROOT / '.venv' / 'bin'
KSERVE_PYTHON = ROOT / '.venv-kserve' / 'bin' / 'python'

# The Kubernetes releases the manifests are validated against: the oldest we claim and the newest
# kubernetes-validate 1.37.0 ships a schema for.
KUBERNETES_VERSIONS = ['1.30.0', '1.37.0']

# The shutdown grace the image's config and the built-in defaults give (docs/configuration.md).
DEFAULT_SHUTDOWN_GRACE_SECONDS = 25


def load_docs(path):
    """Every YAML document in path, empty ones dropped."""
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def load_doc(path):
    [doc] = load_docs(path)
    return doc


def tool(name):
    """A command-line tool: the venv's when there, else the PATH's; the test fails when there is none, since
    scripts/setup installs each one."""
    candidate = VENV_BIN / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    assert found, f'{name} is not installed: run scripts/setup'
    return found


def server_env_variables():
    """The ACM_SERVE_* names the server reads: ServerOverrides.variables, and ACM_SERVE_CONFIG."""
    text = (ROOT / 'Sources/ACMServing/ServerOverrides.swift').read_text()
    m = re.search(r'static let variables = \[(.*?)\]', text, re.S)
    assert m, 'ServerOverrides.variables not found'
    names = re.findall(r'"([A-Z0-9_]+)"', m.group(1))
    assert 'PORT' in names and 'MODELS' in names
    return {'ACM_SERVE_' + n for n in names} | {'ACM_SERVE_CONFIG'}


def exported_metrics():
    """The metric names the server exports, as {name: type}: docs/metrics.md's table, each checked against
    Sources/ACMServing/Metrics.swift's descriptors (namespace acm, metric name, unit)."""
    table = {}
    for line in (ROOT / 'docs/metrics.md').read_text().splitlines():
        m = re.match(r'\| `(acm_[a-z_]+)` \| (counter|gauge|histogram) \|', line)
        if m:
            table[m.group(1)] = m.group(2)
    assert len(table) >= 10, 'docs/metrics.md: metrics table not found'
    source = (ROOT / 'Sources/ACMServing/Metrics.swift').read_text()
    swift = set()
    for metric, unit in re.findall(r'name\("([a-z_]+)", "([a-z_]*)"', source):
        swift.add('_'.join(['acm', metric] + ([unit] if unit else [])))
    missing = set(table) ^ swift
    assert not missing, f'docs/metrics.md and Metrics.swift disagree on {sorted(missing)}'
    return table


def series_names(metrics):
    """Every series name the exported metrics give: histograms as _bucket, _sum and _count."""
    names = set()
    for name, kind in metrics.items():
        if kind == 'histogram':
            names |= {name + '_bucket', name + '_sum', name + '_count'}
        else:
            names.add(name)
    return names


def acm_server_binary():
    """acm-serve as make builds it (ACM_SERVE_BIN, as Tests/server uses, or .build/release/acm-serve); skips the test
    when it has not been built, as pytest run alone on a fresh clone would be."""
    path = os.environ.get('ACM_SERVE_BIN') or str(ROOT / '.build/release/acm-serve')
    if not os.path.exists(path):
        pytest.skip(f'{path}: not built (make test builds it first)')
    return path
