"""deploy/kubernetes/monitoring: the ServiceMonitor and PrometheusRule against the Prometheus operator's API, offline,
through cloudcoil-models-prometheus-operator (PyPI: pydantic models generated from prometheus-operator v0.80.1's CRDs).
Pydantic checks types, enums and required fields; it ignores unknown keys, so `unknown_keys` walks the models' fields
(by their JSON names) to find those."""
import copy
import types
import typing

import pydantic
import pytest
from cloudcoil.models.prometheus_operator import v1

from deployfiles import DEPLOY, load_doc

MONITORING = DEPLOY / 'kubernetes/monitoring'


def model_classes(annotation):
    """The pydantic model classes an annotation may hold (through Optional, Union, List, Dict, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return [annotation]
    out = []
    for arg in typing.get_args(annotation):
        out += model_classes(arg)
    return out


def unknown_keys(value, cls, path):
    """The JSON keys in value (and in the objects it holds) that its model class has no field for."""
    if isinstance(cls, type) and issubclass(cls, pydantic.RootModel):
        return unknown_keys(value, cls.model_fields['root'].annotation, path)
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in unknown_keys(item, cls, f'{path}[{i}]')]
    if not isinstance(value, dict) or not (isinstance(cls, type) and issubclass(cls, pydantic.BaseModel)):
        return []
    fields = {(f.alias or name): f for name, f in cls.model_fields.items()}
    problems = []
    for key, item in value.items():
        if key not in fields:
            problems.append(f'{path}.{key}')
            continue
        annotation = fields[key].annotation
        origin = typing.get_origin(annotation)
        inner = model_classes(annotation)
        if len(inner) != 1:
            continue  # a scalar, or a union of several models: pydantic alone checks it
        if origin in (dict, typing.Dict) or (origin in (typing.Union, types.UnionType) and any(
                typing.get_origin(a) in (dict, typing.Dict) for a in typing.get_args(annotation))):
            problems += [p for k, v in item.items() for p in unknown_keys(v, inner[0], f'{path}.{key}.{k}')]
        else:
            problems += unknown_keys(item, inner[0], f'{path}.{key}')
    return problems


def check(doc, cls):
    """Problems with doc as an object of cls: unknown keys, then pydantic's validation errors."""
    problems = unknown_keys(doc, cls, doc.get('kind', '?'))
    try:
        cls.model_validate(doc)
    except pydantic.ValidationError as e:
        problems += [f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()]
    return problems


@pytest.mark.parametrize('name, cls', [('servicemonitor.yaml', v1.ServiceMonitor),
                                       ('prometheusrule.yaml', v1.PrometheusRule)])
def test_objects_match_the_operator_api(name, cls):
    """Should have only fields of the Prometheus operator's API, of their types, with the required ones."""
    doc = load_doc(MONITORING / name)
    assert (doc['apiVersion'], doc['kind']) == ('monitoring.coreos.com/v1', cls.__name__)
    assert check(doc, cls) == []


@pytest.mark.parametrize('edit, problem', [
    (lambda d: d['spec']['endpoints'][0].update(intervall='15s'), 'ServiceMonitor.spec.endpoints[0].intervall'),
    (lambda d: d['spec']['selector'].update(matchLabel={}), 'ServiceMonitor.spec.selector.matchLabel'),
    (lambda d: d['spec']['endpoints'][0].update(scheme='gopher'), 'scheme'),
    (lambda d: d['spec'].pop('selector'), 'selector'),
])
def test_checks_reject_a_broken_service_monitor(edit, problem):
    """Should fail on a misspelt field (at any depth), a value out of an enum and a missing required field."""
    doc = copy.deepcopy(load_doc(MONITORING / 'servicemonitor.yaml'))
    edit(doc)
    problems = check(doc, v1.ServiceMonitor)
    assert any(problem in p for p in problems), problems


def test_checks_reject_a_broken_rule():
    """Should fail on a misspelt field inside a PrometheusRule's rules."""
    doc = copy.deepcopy(load_doc(MONITORING / 'prometheusrule.yaml'))
    doc['spec']['groups'][1]['rules'][0]['labelz'] = {}
    assert any(p.endswith('.labelz') for p in check(doc, v1.PrometheusRule))


def test_service_monitor_scrapes_the_service_metrics_port():
    """Should select the acm-serve Service by its labels and scrape /metrics on its named port."""
    monitor = load_doc(MONITORING / 'servicemonitor.yaml')
    service = load_doc(DEPLOY / 'kubernetes/base/service.yaml')
    assert monitor['spec']['selector']['matchLabels'].items() <= service['metadata']['labels'].items()
    [endpoint] = monitor['spec']['endpoints']
    assert endpoint['port'] in {p['name'] for p in service['spec']['ports']}
    assert endpoint['path'] == '/metrics'
