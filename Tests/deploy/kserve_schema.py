"""Checks KServe objects against KServe's own API, as its Python SDK (kserve 0.21.0, in .venv-kserve) generates it from
the CRDs: each model class's `openapi_types` (field -> type) and `attribute_map` (field -> JSON key), and the
Kubernetes client's classes for the core types they embed (V1Container, V1Probe, ...). Every key must be a field of
its class and every value of its type; the SDK's constructors then check required fields.

    .venv-kserve/bin/python Tests/deploy/kserve_schema.py FILE.yaml...     (or - to read YAML from stdin)

Prints one line per problem and exits 1 when there is any; run by test_kserve.py.
"""
import re
import sys

import kserve
import kubernetes.client
import yaml

# Which SDK class describes each kind.
KINDS = {
    ('serving.kserve.io/v1alpha1', 'ClusterServingRuntime'): 'V1alpha1ClusterServingRuntime',
    ('serving.kserve.io/v1alpha1', 'ServingRuntime'): 'V1alpha1ServingRuntime',
    ('serving.kserve.io/v1beta1', 'InferenceService'): 'V1beta1InferenceService',
}

# Container types, as KServe's generator writes them (list[X], dict(str, X)) and the Kubernetes client's (List[X],
# Dict[str, X]).
LIST = re.compile(r'(?:list|List)\[(.+)\]')
DICT = re.compile(r'(?:dict\(str, (.+)\)|Dict\[str, (.+)\])')


def model_class(name):
    """The SDK's class for an OpenAPI type name: KServe's, else the Kubernetes client's."""
    for module in (kserve, kubernetes.client):
        cls = getattr(module, name, None)
        if cls is not None and hasattr(cls, 'openapi_types'):
            return cls
    raise KeyError(f'no model class {name}')


def check(value, type_name, path, problems):
    """Appends to problems every key of value that type_name has no field for, and every value of the wrong type."""
    if value is None:
        return
    if m := LIST.fullmatch(type_name):
        if not isinstance(value, list):
            problems.append(f'{path}: expected a list, got {value!r}')
            return
        for i, item in enumerate(value):
            check(item, m.group(1), f'{path}[{i}]', problems)
        return
    if m := DICT.fullmatch(type_name):
        if not isinstance(value, dict):
            problems.append(f'{path}: expected a map, got {value!r}')
            return
        for key, item in value.items():
            if not isinstance(key, str):
                problems.append(f'{path}: key {key!r} is not a string')
            check(item, m.group(1) or m.group(2), f'{path}.{key}', problems)
        return
    scalar = {'str': str, 'bool': bool, 'int': int, 'float': (int, float), 'object': object, 'datetime': str,
              'date': str}
    if type_name in scalar:
        ok = isinstance(value, scalar[type_name])
        if type_name in ('int', 'float') and isinstance(value, bool):
            ok = False
        if not ok:
            problems.append(f'{path}: expected {type_name}, got {type(value).__name__} {value!r}')
        return
    cls = model_class(type_name)
    if not isinstance(value, dict):
        problems.append(f'{path}: expected an object ({type_name}), got {value!r}')
        return
    keys = {json_key: attr for attr, json_key in cls.attribute_map.items()}
    for key, item in value.items():
        if key not in keys:
            problems.append(f'{path}.{key}: unknown field of {type_name}')
            continue
        check(item, cls.openapi_types[keys[key]], f'{path}.{key}', problems)


def construct(value, type_name):
    """Builds the SDK object, which raises ValueError on a missing required field (KServe's classes check them in
    their setters, the Kubernetes client's are pydantic models)."""
    if value is None:
        return None
    if m := LIST.fullmatch(type_name):
        return [construct(v, m.group(1)) for v in value]
    if m := DICT.fullmatch(type_name):
        return {k: construct(v, m.group(1) or m.group(2)) for k, v in value.items()}
    if type_name in ('str', 'bool', 'int', 'float', 'object', 'datetime', 'date'):
        return value
    cls = model_class(type_name)
    keys = {json_key: attr for attr, json_key in cls.attribute_map.items()}
    return cls(**{keys[k]: construct(v, cls.openapi_types[keys[k]]) for k, v in value.items()})


def check_document(doc, where):
    problems = []
    kind = KINDS.get((doc.get('apiVersion'), doc.get('kind')))
    if kind is None:
        return [f'{where}: {doc.get("apiVersion")} {doc.get("kind")} is not a KServe kind checked here']
    check(doc, kind, f'{where} {doc["kind"]}', problems)
    if not problems:
        try:
            construct(doc, kind)
        except (ValueError, TypeError) as e:
            problems.append(f'{where} {doc["kind"]}: ' + ' | '.join(str(e).splitlines()))
    return problems


def main(paths):
    problems, count = [], 0
    for path in paths:
        text = sys.stdin.read() if path == '-' else open(path).read()
        for i, doc in enumerate(d for d in yaml.safe_load_all(text) if d):
            count += 1
            problems += check_document(doc, f'{path}#{i}')
    for p in problems:
        print(p)
    if not count:
        print('no document checked')
        return 1
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
