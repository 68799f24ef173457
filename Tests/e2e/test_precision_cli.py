"""`--precision` end to end: `acm-serve evaluate --compare-f32` and `predict` on a fixture model, and what
`acm-serve version` says about bf16."""
import json
import os
import subprocess

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURE = os.path.join(REPO, 'Tests', 'ACMModelsTests', 'Fixtures', 'vit_mixed')
BIN = os.environ.get('ACM_SERVE_BIN', os.path.join(REPO, '.build', 'release', 'acm-serve'))


def run(*args, env=None):
    assert os.path.exists(BIN), f'build acm-serve first (swift build -c release); looked for {BIN}'
    return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=120,
                          env=None if env is None else {**os.environ, **env})


def has_bf16():
    with open('/proc/cpuinfo') as f:
        return 'avx512_bf16' in f.read().split()


@pytest.fixture(scope='module')
def labelled(tmp_path_factory):
    """200 random images for the fixture model [N, 1, 16, 16] and random labels, as .npy files."""
    d = tmp_path_factory.mktemp('set')
    rng = np.random.default_rng(0)
    xs, ys = str(d / 'x.npy'), str(d / 'y.npy')
    np.save(xs, rng.standard_normal((200, 1, 16, 16), dtype=np.float32))
    np.save(ys, rng.integers(0, 10, 200).astype(np.int64))
    return xs, ys


def evaluate(labelled, *args, env=None):
    out = run('evaluate', '--model', FIXTURE, '--images', labelled[0], '--labels', labelled[1], '--batch', '32',
              '--json', *args, env=env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


@pytest.mark.parametrize('policy', [[], ['--budget', '0.5']])
def test_f32_compared_with_itself_changes_nothing(labelled, policy):
    """Should report, for f32 against f32 on the same batches, no changed decision or prediction and the same
    accuracy."""
    res, _ = evaluate(labelled, '--precision', 'f32', '--compare-f32', *policy)
    assert res['precision'] == 'f32'
    assert res['changed_decisions'] == 0 and res['changed_predictions'] == 0
    assert res['f32_accuracy'] == res['accuracy']


def test_bf16_is_compared_with_f32(labelled):
    """Should run bf16 where the CPU has AVX-512 BF16, and then move some gate decisions (bf16 rounding moves
    near-ties) but few predictions; elsewhere run f32 and say so on standard error."""
    res, err = evaluate(labelled, '--precision', 'bf16', '--compare-f32', '--budget', '0.5')
    if has_bf16():
        assert res['precision'] == 'bf16'
        assert 0 < res['changed_decisions'] < 0.1
        assert res['changed_predictions'] <= 0.05
        assert abs(res['accuracy'] - res['f32_accuracy']) <= 0.05
    else:
        assert res['precision'] == 'f32' and 'bf16 unavailable' in err


def test_bf16_off_falls_back_to_f32(labelled):
    """Should run f32, and say why, when bf16 is asked for but switched off (ACM_BF16=off, as on a CPU without
    it); `version` names the reason."""
    res, err = evaluate(labelled, '--precision', 'bf16', env={'ACM_BF16': 'off'})
    assert res['precision'] == 'f32'
    assert 'note: bf16 unavailable (none (ACM_BF16=off)); running f32' in err
    assert 'bf16 GEMM: none (ACM_BF16=off)' in run('version', env={'ACM_BF16': 'off'}).stdout


def test_version_names_the_bf16_instructions():
    """Should name AVX-512 BF16 and LIBXSMM where the CPU has the instructions, else say there are none."""
    line = next(l for l in run('version').stdout.splitlines() if l.startswith('bf16 GEMM:'))
    if has_bf16():
        assert line.startswith('bf16 GEMM: avx512_bf16 (LIBXSMM 1.17,')
    else:
        assert line.startswith('bf16 GEMM: none')


def test_predict_in_bf16_keeps_the_top_class():
    """Should classify the fixture's example in bf16 with the f32 top class and nearly its logits."""
    example = os.path.join(FIXTURE, 'example.npy')
    f32 = run('predict', '--model', FIXTURE, '--input', example, '--full', '--precision', 'f32')
    bf16 = run('predict', '--model', FIXTURE, '--input', example, '--full', '--precision', 'bf16')
    assert f32.returncode == 0 and bf16.returncode == 0, bf16.stderr
    top = [next(l for l in o.stdout.splitlines() if l.strip().startswith('1.')) for o in (f32, bf16)]
    assert top[0].split('(class')[1] == top[1].split('(class')[1]
