"""The server as the image and the manifests run it, without Docker or a cluster: the built binary (make test builds it
and the Whisper models first) started with the image's layout and default command, the Deployment's environment and
the Dockerfile's HEALTHCHECK; then with the KServe runtime's args and environment; both on a read-only root filesystem
and /tmp where the machine allows it (as root, in a mount namespace of their own). Each answers the example request at
its compute budget, exports the metrics the rules and dashboard use, and exits 0 on SIGTERM."""
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from deployfiles import DEPLOY, ROOT, acm_server_binary, exported_metrics, load_doc, series_names
from test_docker import final_stage
from test_prometheus import dashboard, metric_names, rules

EXAMPLE = DEPLOY / 'kserve/example-request.json'


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def http(port, method, path, body=None, timeout=30):
    """(status, body bytes) of one request to 127.0.0.1:port."""
    req = urllib.request.Request(f'http://127.0.0.1:{port}{path}', data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def quantity(text):
    """Bytes of a Kubernetes memory quantity such as 2Gi or 512Mi."""
    m = re.fullmatch(r'(\d+)(Ki|Mi|Gi)?', text)
    return int(m.group(1)) * {None: 1, 'Ki': 1 << 10, 'Mi': 1 << 20, 'Gi': 1 << 30}[m.group(2)]


def resolve_env(container, cpus):
    """A container's env as Kubernetes would set it: values as they are, limits.cpu from resourceFieldRef."""
    env = {}
    for e in container.get('env', []):
        if 'value' in e:
            env[e['name']] = e['value']
        else:
            assert e['valueFrom']['resourceFieldRef']['resource'] == 'limits.cpu', e
            env[e['name']] = str(cpus)
    return env


class Server:
    """acm-serve started as argv with env, in cwd; stopped with SIGTERM by close(), which returns its exit status."""

    def __init__(self, argv, env, cwd, port, timeout=180):
        self.log_path = os.path.join(cwd, 'server.log')
        self.log = open(self.log_path, 'wb')
        environment = {k: v for k, v in os.environ.items() if not k.startswith('ACM_SERVE_')} | env
        self.proc = subprocess.Popen(argv, cwd=cwd, env=environment, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        self.port = port
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, self.output()
            try:
                if http(port, 'GET', '/v2/health/ready', timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, 'not ready:\n' + self.output()
            time.sleep(0.1)

    def output(self):
        if not self.log.closed:
            self.log.flush()
        return open(self.log_path, errors='replace').read()

    def close(self, timeout=60):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.log.close()


# Runs "$@" with the root filesystem and /tmp (where it is a mount of its own) read-only, their files kept, in a mount
# namespace of its own: as the image runs.
READ_ONLY = ('for m in / /tmp; do if [ $m = / ] || mountpoint -q $m; then '
             'mount --bind $m $m && mount -o remount,bind,ro $m || exit 1; fi; done; exec "$@"')


def read_only(argv):
    """argv run on a read-only root filesystem and /tmp, where this machine allows it (root, unshare); else argv."""
    if os.geteuid() != 0 or shutil.which('unshare') is None:
        return argv
    wrapped = ['unshare', '--mount', '--propagation', 'private', 'sh', '-c', READ_ONLY, 'sh']
    probe = subprocess.run(wrapped + ['sh', '-c', '! touch /tmp/.ro-probe 2>/dev/null && ! touch /.ro-probe 2>/dev/null'],
                           capture_output=True)
    return wrapped + argv if probe.returncode == 0 else argv


def image_layout(tmp_path):
    """The image's /opt/acm-serve in tmp_path: its config (deploy/docker/acm-serve.json) and every model it names,
    linked from models/ or build/models/, where the repository keeps them."""
    config = json.loads((DEPLOY / 'docker/acm-serve.json').read_text())
    (tmp_path / 'config').mkdir()
    (tmp_path / 'models').mkdir()
    (tmp_path / 'config/acm-serve.json').write_text(json.dumps(config))
    for name in config['models']:
        source = next((p for p in [ROOT / 'models' / name, ROOT / 'build/models' / name]
                       if (p / 'model.safetensors').exists()), None)
        if source is None:
            pytest.skip(f'{name}: not built (make whisper-model)')
        (tmp_path / 'models' / name).symlink_to(source)
    return tmp_path


def check_example_request(port, model):
    """Posts example-request.json; the answer must keep to its budget and name the image's class first."""
    request = json.loads(EXAMPLE.read_text())
    status, body = http(port, 'POST', f'/v2/models/{model}/infer', EXAMPLE.read_bytes())
    assert status == 200, body
    answer = json.loads(body)
    budget = request['parameters']['compute_budget']
    assert answer['parameters']['compute_budget'] == budget
    assert 0 < answer['parameters']['compute_fraction'] <= budget
    labels = {o['name']: o for o in answer['outputs']}['labels']
    assert labels['data'][0] == 'Ankle boot', labels  # Fashion-MNIST's first test image


def check_metrics(port):
    """/metrics must have every acm_* series the rules and the dashboard use (docs/metrics.md's names, served)."""
    status, body = http(port, 'GET', '/metrics')
    assert status == 200
    served = set(re.findall(r'^(acm_[a-z_]+)', body.decode(), re.M))
    used = set()
    for rule in rules():
        used |= {n for n in metric_names(rule['expr']) if n.startswith('acm_')}
    assert used and used <= series_names(exported_metrics())
    # Each model serves one of the two batch-size histograms; the rules use both.
    kinds = {'acm_batch_size_images', 'acm_batch_size_utterances'}
    # The adaptive budget's series exist only for models with adaptive_budget, which this config has none of.
    missing = {n for n in used - served if not any(n.startswith(k) for k in kinds) and not n.startswith('acm_adaptive_')}
    assert not missing, missing
    assert any(n.startswith('acm_batch_size_') for n in served)
    assert 'label_values(acm_request_success_total, model)' in json.dumps(dashboard())


def test_image_default_command_with_the_deployment_environment(tmp_path):
    """Should serve the bundled models from the image's layout with its default command and the Deployment's
    environment, pass the HEALTHCHECK command, answer the example request at its budget, and exit 0 on SIGTERM."""
    binary = acm_server_binary()
    layout = image_layout(tmp_path)
    [cmd] = [json.loads(a) for k, a in final_stage() if k == 'CMD']
    assert cmd[:2] == ['serve', '--config']
    argv = [binary, *[a.replace('/opt/acm-serve', str(layout)) for a in cmd]]
    deployment = load_doc(DEPLOY / 'kubernetes/base/deployment.yaml')
    [container] = deployment['spec']['template']['spec']['containers']
    cpus = int(container['resources']['limits']['cpu'])
    port = free_port()
    env = resolve_env(container, cpus) | {'ACM_SERVE_PORT': str(port)}
    server = Server(read_only(argv), env, str(tmp_path), port)
    try:
        status, body = http(port, 'GET', '/v2/health/live')
        assert status == 200 and json.loads(body) == {'live': True}
        config = json.loads((DEPLOY / 'docker/acm-serve.json').read_text())
        for name in config['models']:
            assert http(port, 'GET', f'/v2/models/{name}/ready')[0] == 200, name
        check_example_request(port, 'fashion-vit-acm')
        check_metrics(port)
        # The memory limit holds the loaded models plus the cap on request bodies in flight.
        rss = int(re.search(r'VmRSS:\s+(\d+) kB', open(f'/proc/{server.proc.pid}/status').read()).group(1)) * 1024
        cap = config['limits']['max_inflight_body_bytes']
        limit = quantity(container['resources']['limits']['memory'])
        assert rss + cap < limit, (rss, cap, limit)
        [check] = [a for k, a in final_stage() if k == 'HEALTHCHECK']
        command = json.loads(check[check.index('CMD') + 3:].strip())
        if shutil.which('wget') is None:
            pytest.skip('wget, the HEALTHCHECK client, is not installed here')
        result = subprocess.run(command, env={'PATH': os.environ['PATH'], 'ACM_SERVE_PORT': str(port)},
                                capture_output=True, text=True, timeout=10)
        assert result.returncode == 0, (shlex.join(command), result.stderr)
    finally:
        code = server.close()
    assert code == 0, server.output()
    # The check fails once the server is gone.
    result = subprocess.run(command, env={'PATH': os.environ['PATH'], 'ACM_SERVE_PORT': str(port)},
                            capture_output=True, timeout=10)
    assert result.returncode != 0


def test_kserve_runtime_args_serve_one_model_under_its_name(tmp_path):
    """Should start with the ClusterServingRuntime's args and environment ({{.Name}} an InferenceService's name,
    /mnt/models its model directory), then answer the example request through the v2 infer route at its budget."""
    binary = acm_server_binary()
    runtime = load_doc(DEPLOY / 'kserve/cluster-serving-runtime.yaml')
    [container] = runtime['spec']['containers']
    isvc = load_doc(DEPLOY / 'kserve/fashion-vit-acm.yaml')
    name = isvc['metadata']['name']
    mnt = tmp_path / 'mnt-models'
    mnt.symlink_to(ROOT / 'models/fashion-vit-acm')
    port = free_port()
    container_port = container['ports'][0]['containerPort']
    args = [a.replace('{{.Name}}', name).replace('/mnt/models', str(mnt)) for a in container['args']]
    args = [str(port) if a == str(container_port) else a for a in args]
    assert str(port) in args
    env = resolve_env(container, int(container['resources']['limits']['cpu']))
    server = Server(read_only([binary, *args]), env, str(tmp_path), port)
    try:
        assert http(port, 'GET', f'/v2/models/{name}/ready')[0] == 200
        check_example_request(port, name)
    finally:
        code = server.close()
    assert code == 0, server.output()
