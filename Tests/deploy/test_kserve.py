"""deploy/kserve: the ClusterServingRuntime and InferenceServices against KServe's schema (kserve_schema.py, run with
the KServe SDK of .venv-kserve), and what they promise: the acm-serve model format auto-selected on protocol v2, the
model served under the InferenceService's name from /mnt/models on one port throughout, the Deployment's security
settings, and an example request with a compute_budget that matches the model's input."""
import json
import pathlib
import subprocess

import pytest
import yaml

from deployfiles import DEPLOY, KSERVE_PYTHON, ROOT, load_doc, server_env_variables

KSERVE = DEPLOY / 'kserve'
CHECKER = pathlib.Path(__file__).with_name('kserve_schema.py')
FILES = ['cluster-serving-runtime.yaml', 'fashion-vit-acm.yaml', 'whisper-tiny-en-acm.yaml']


def run_checker(*args, stdin=None):
    assert KSERVE_PYTHON.exists(), f'{KSERVE_PYTHON}: run scripts/setup'
    return subprocess.run([str(KSERVE_PYTHON), str(CHECKER), *args], input=stdin, capture_output=True, text=True)


def runtime():
    return load_doc(KSERVE / 'cluster-serving-runtime.yaml')


def container():
    [c] = runtime()['spec']['containers']
    return c


def test_objects_match_kserve_schema():
    """Should have only fields KServe's API has, each of its type, and every required one."""
    result = run_checker(*[str(KSERVE / name) for name in FILES])
    assert result.returncode == 0, result.stdout + result.stderr


def broken_objects():
    """Copies of the manifests, each with one mistake, and the checker's message for it."""
    def isvc(edit):
        doc = load_doc(KSERVE / 'fashion-vit-acm.yaml')
        edit(doc)
        return doc

    def runtime_with(edit):
        doc = runtime()
        edit(doc)
        return doc

    container_of = lambda d: d['spec']['containers'][0]  # noqa: E731
    return [
        (isvc(lambda d: d['spec']['predictor']['model'].update(storageURI='pvc://x')), 'storageURI: unknown field'),
        (isvc(lambda d: d['spec']['predictor']['model'].update(storageUri=3)), 'storageUri: expected str'),
        (isvc(lambda d: d['spec']['predictor'].update(minReplicas='1')), 'minReplicas: expected int'),
        (isvc(lambda d: d['spec']['predictor']['model']['modelFormat'].update(nam='x')), 'nam: unknown field'),
        # inside the Kubernetes types the runtime embeds
        (runtime_with(lambda d: container_of(d)['securityContext'].update(seccompProfil={})),
         'securityContext.seccompProfil: unknown field'),
        (runtime_with(lambda d: container_of(d)['resources']['limits'].update(cpu=2)), 'limits.cpu: expected str'),
        (runtime_with(lambda d: container_of(d).pop('name')), 'validation error for V1Container | name |   Field required'),
    ]


def test_checker_rejects_unknown_fields_wrong_types_and_missing_fields():
    """Should fail on a misspelt field, a wrong type or a missing required field, in KServe's types and in the
    Kubernetes types they embed, naming each."""
    cases = broken_objects()
    result = run_checker('-', stdin=yaml.safe_dump_all([doc for doc, _ in cases]))
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for i, (_, message) in enumerate(cases):
        mine = [line for line in lines if line.startswith(f'-#{i} ')]
        assert mine and any(message in line for line in mine), (i, message, lines)


def test_runtime_serves_the_acm_serve_format_on_protocol_v2():
    """Should declare the model format acm-serve, auto-selected, and the v2 (Open Inference) protocol only."""
    spec = runtime()['spec']
    assert [(f['name'], f['autoSelect']) for f in spec['supportedModelFormats']] == [('acm-serve', True)]
    assert spec['protocolVersions'] == ['v2']


def test_runtime_compute_threads_match_the_cpu_limit():
    """Should run one engine thread per CPU of the container's limit (a literal: Knative refuses resourceFieldRef)."""
    c = container()
    env = {e['name']: e for e in c['env']}
    assert env['ACM_SERVE_COMPUTE_THREADS'] == {'name': 'ACM_SERVE_COMPUTE_THREADS', 'value': c['resources']['limits']['cpu']}


def test_runtime_serves_mnt_models_under_the_inference_service_name_on_one_port():
    """Should serve /mnt/models as {{.Name}}, on the port its args, containerPort (http1), probes and the Prometheus
    annotation all name."""
    c = container()
    args = c['args']
    assert args[0] == 'serve'
    assert args[args.index('--model') + 1] == '{{.Name}}=/mnt/models'
    port = int(args[args.index('--port') + 1])
    assert c['ports'] == [{'name': 'http1', 'containerPort': port, 'protocol': 'TCP'}]
    assert c['readinessProbe']['httpGet'] == {'path': '/v2/health/ready', 'port': port}
    assert c['livenessProbe']['httpGet'] == {'path': '/v2/health/live', 'port': port}
    assert runtime()['spec']['annotations']['prometheus.kserve.io/port'] == str(port)


def test_runtime_has_the_deployment_security_settings():
    """Should run the container with the Deployment's restricted settings (on the container, as Knative accepts)."""
    deployment = load_doc(DEPLOY / 'kubernetes/base/deployment.yaml')
    pod = deployment['spec']['template']['spec']
    [dc] = pod['containers']
    expected = dict(dc['securityContext'])
    expected.update({k: pod['securityContext'][k] for k in ['runAsUser', 'runAsGroup', 'seccompProfile']})
    assert container()['securityContext'] == expected
    assert not container().get('volumeMounts') and not runtime()['spec'].get('volumes')
    assert container()['image'] == dc['image'] and container()['imagePullPolicy'] == 'IfNotPresent'


@pytest.mark.parametrize('name', FILES)
def test_environment_holds_only_variables_the_server_reads(name):
    """Should set only ACM_SERVE_* variables the server reads, and turn off Service links in the predictors."""
    known = server_env_variables()
    doc = load_doc(KSERVE / name)
    if doc['kind'] == 'InferenceService':
        assert doc['spec']['predictor']['enableServiceLinks'] is False
        containers = [doc['spec']['predictor']['model']]
    else:
        containers = doc['spec']['containers']
    for c in containers:
        for e in c.get('env', []):
            assert not e['name'].startswith('ACM_SERVE_') or e['name'] in known, e['name']


@pytest.mark.parametrize('name, model', [('fashion-vit-acm.yaml', 'fashion-vit-acm'),
                                         ('whisper-tiny-en-acm.yaml', 'whisper-tiny.en-acm')])
def test_inference_services_use_the_runtime_format_on_a_model_directory(name, model):
    """Should ask for the acm-serve format and point storageUri at a directory named after a model this repository
    has (models/ or what make whisper-model assembles)."""
    doc = load_doc(KSERVE / name)
    m = doc['spec']['predictor']['model']
    assert m['modelFormat'] == {'name': 'acm-serve'}
    scheme, _, rest = m['storageUri'].partition('://')
    assert scheme in ('pvc', 's3', 'gs') and rest.rsplit('/', 1)[-1] == model
    assert (ROOT / 'models' / model).is_dir()
    # resources given here replace the runtime's: the compute threads must still match the CPU limit
    if 'resources' in m:
        threads = {e['name']: e.get('value') for e in container()['env']}['ACM_SERVE_COMPUTE_THREADS']
        assert m['resources']['limits']['cpu'] == threads


def test_example_request_asks_for_a_budget_on_the_model_input():
    """Should be an Open Inference Protocol request for `input`, FP32 [1, 1, 28, 28] with 784 finite values, with a
    compute_budget in (0, 1]."""
    request = json.loads((KSERVE / 'example-request.json').read_text())
    [tensor] = request['inputs']
    assert (tensor['name'], tensor['datatype'], tensor['shape']) == ('input', 'FP32', [1, 1, 28, 28])
    assert len(tensor['data']) == 28 * 28 and all(isinstance(v, (int, float)) for v in tensor['data'])
    assert 0 < request['parameters']['compute_budget'] <= 1
    config = json.loads((ROOT / 'models/fashion-vit-acm/config.json').read_text())
    assert config['vit']['image_size'] == 28 and config['vit']['num_channels'] == 1
