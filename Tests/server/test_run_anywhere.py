"""`acm-serve serve` outside the repository: no config file (the built-in defaults), models from --model with
paths relative to the current directory, and settings from ACM_SERVE_* environment variables, which flags
override (docs/configuration.md, "Environment")."""
import os
import shutil
import subprocess
import time

import pytest

from harness import BIN, HOST, REPO, free_port, request

MODEL = os.path.join(REPO, 'models', 'fashion-vit-acm')


def start(cwd, args=(), env=None):
    """The server process, its log file."""
    log = open(os.path.join(cwd, 'server.log'), 'wb')
    environment = {k: v for k, v in os.environ.items() if not k.startswith('ACM_SERVE_')}
    environment.update(env or {})
    proc = subprocess.Popen([BIN, 'serve', *args], cwd=cwd, env=environment, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    return proc, log


def wait_ready(proc, port, cwd):
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, open(os.path.join(cwd, 'server.log')).read()
        try:
            if request(port, 'GET', '/v2/health/ready', timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError('not ready:\n' + open(os.path.join(cwd, 'server.log')).read())


def stop(proc, log):
    proc.terminate()
    try:
        code = proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError('no exit within 30 s of SIGTERM:\n' + open(log.name).read())
    finally:
        log.close()
    assert code == 0, open(log.name).read()


def test_relative_model_without_a_config(tmp_path):
    """Should serve a model given by a path relative to the current directory, with no config file anywhere,
    the flags' host and port over the defaults."""
    shutil.copytree(MODEL, tmp_path / 'mine')
    port = free_port()
    proc, log = start(str(tmp_path), ['--model', 'clothes=mine', '--host', HOST, '--port', str(port)])
    try:
        wait_ready(proc, port, str(tmp_path))
        status, _, body = request(port, 'GET', '/v2/models/clothes')
        assert status == 200 and b'"clothes"' in body
    finally:
        stop(proc, log)


def test_environment(tmp_path):
    """Should take the models, the address and a per-model setting from ACM_SERVE_*, let a flag win over its
    variable (ACM_SERVE_PORT names a port nobody listens on; --port the real one), and warn of a name it does not
    read instead of refusing it."""
    port, unused = free_port(), free_port()
    env = {'ACM_SERVE_MODELS': f'a={MODEL}, b={MODEL}', 'ACM_SERVE_HOST': HOST, 'ACM_SERVE_PORT': str(unused),
           'ACM_SERVE_MAX_BATCH_SIZE': '3', 'ACM_SERVE_LOG_LEVEL': 'warning', 'ACM_SERVE_PROT': '1'}
    proc, log = start(str(tmp_path), ['--port', str(port)], env)
    try:
        wait_ready(proc, port, str(tmp_path))
        for name in ('a', 'b'):
            status, _, body = request(port, 'GET', f'/v2/models/{name}/config')
            assert status == 200 and b'"max_batch_size":3' in body.replace(b' ', b''), body
        with pytest.raises(OSError):
            request(unused, 'GET', '/v2/health/live', timeout=2)
    finally:
        stop(proc, log)
    text = open(os.path.join(tmp_path, 'server.log')).read()
    assert 'ignoring environment variables acm-serve does not read' in text and 'ACM_SERVE_PROT' in text, text


@pytest.mark.parametrize('args, env, message', [
    ([], {}, 'no models to serve'),
    ([], {'ACM_SERVE_MODELS': 'a'}, "a model is NAME=DIR, got 'a'"),
    (['--model', f'a={MODEL}'], {'ACM_SERVE_PORT': 'eighty'}, "ACM_SERVE_PORT='eighty' is not an integer"),
    ([], {'ACM_SERVE_CONFIG': '/nonexistent/acm-serve.json'}, '/nonexistent/acm-serve.json'),
])
def test_refuses_to_start(tmp_path, args, env, message):
    """Should stop at start with a message naming the problem: no models, a bad variable, a missing config."""
    run = subprocess.run([BIN, 'serve', *args], cwd=tmp_path, capture_output=True, text=True, timeout=30,
                         env={**{k: v for k, v in os.environ.items() if not k.startswith('ACM_SERVE_')}, **env})
    assert run.returncode != 0
    assert message in run.stderr, run.stderr
