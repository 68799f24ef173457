"""The stock Open Inference Protocol client, tritonclient.http, unmodified, against acm-serve serve."""
import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from harness import BUDGET_MODES, grey_pixels, model_config, png_bytes, preprocess_grey, tolerance

MODELS = {'vit-mixed': 'vit_mixed', 'vit-bias': 'vit_bias'}


@pytest.fixture(scope='module')
def client(server):
    c = httpclient.InferenceServerClient(server.url, connection_timeout=30, network_timeout=30)
    yield c
    c.close()


def infer(client, model, x, budget=None, binary=True, outputs=('logits',), class_count=0):
    inp = httpclient.InferInput('input', list(x.shape), 'FP32')
    inp.set_data_from_numpy(x.astype(np.float32), binary_data=binary)
    outs = [httpclient.InferRequestedOutput(o, binary_data=binary, class_count=class_count) for o in outputs]
    params = None if budget is None else {'compute_budget': budget}
    return client.infer(model, [inp], outputs=outs, parameters=params)


def test_health(client):
    """Should report the server live and ready, and each model ready."""
    assert client.is_server_live()
    assert client.is_server_ready()
    for model in MODELS:
        assert client.is_model_ready(model)
        assert client.is_model_ready(model, '1')
    assert not client.is_model_ready('no-such-model')


def test_server_metadata(client):
    """Should name the server and list the extensions it implements."""
    meta = client.get_server_metadata()
    assert meta['name'] == 'acm-serve'
    assert isinstance(meta['version'], str) and meta['version']
    assert isinstance(meta['extensions'], list)
    assert 'binary_tensor_data' in meta['extensions']
    assert 'classification' in meta['extensions']


@pytest.mark.parametrize('model', MODELS)
def test_model_metadata(client, model):
    """Should describe the input [-1, C, H, W] FP32 and the outputs logits [-1, classes] (and labels with labels, and
    patch_learners [-1, patches] with ACMs)."""
    cfg = model_config(MODELS[model])
    vit = cfg['vit']
    meta = client.get_model_metadata(model)
    assert meta['name'] == model
    assert meta['versions'] == ['1']
    assert isinstance(meta['platform'], str) and meta['platform']
    [inp] = meta['inputs']
    assert inp == {'name': 'input', 'datatype': 'FP32',
                   'shape': [-1, vit['num_channels'], vit['image_size'], vit['image_size']]}
    outputs = {o['name']: o for o in meta['outputs']}
    assert outputs['logits'] == {'name': 'logits', 'datatype': 'FP32', 'shape': [-1, vit['num_classes']]}
    if cfg.get('labels'):
        assert outputs['labels'] == {'name': 'labels', 'datatype': 'BYTES', 'shape': [-1, 5]}
    if cfg.get('acm'):
        # the per-patch learner heatmap (test_patch_learners.py), returned only when asked for by name
        grid = vit['image_size'] // vit['patch_size']
        assert outputs['patch_learners'] == {'name': 'patch_learners', 'datatype': 'FP32', 'shape': [-1, grid * grid]}
    assert set(outputs) == {'logits'} | ({'labels'} if cfg.get('labels') else set()) | (
        {'patch_learners'} if cfg.get('acm') else set())
    assert client.get_model_metadata(model, '1') == meta


@pytest.mark.parametrize('model', MODELS)
def test_model_config(client, model):
    """Should give a Triton model configuration with the batcher's settings, for perf_analyzer."""
    vit = model_config(MODELS[model])['vit']
    config = client.get_model_config(model)
    assert config['name'] == model
    assert config['max_batch_size'] == 32
    assert 'dynamic_batching' in config
    [inp] = config['input']
    assert inp['name'] == 'input'
    assert inp['data_type'] == 'TYPE_FP32'
    assert [int(d) for d in inp['dims']] == [vit['num_channels'], vit['image_size'], vit['image_size']]
    names = [o['name'] for o in config['output']]
    assert 'logits' in names


@pytest.mark.parametrize('binary', [False, True], ids=['json', 'binary'])
@pytest.mark.parametrize('budget', list(BUDGET_MODES), ids=[str(b) for b in BUDGET_MODES])
@pytest.mark.parametrize('model', MODELS)
def test_infer_matches_golden(client, model, budget, binary, mixed, bias):
    """Should return the golden logits and mean compute fraction for the 4-image batch, JSON or binary tensors."""
    g = mixed if model == 'vit-mixed' else bias
    mode = BUDGET_MODES[budget]
    result = infer(client, model, g['input'], budget=budget, binary=binary)
    logits = result.as_numpy('logits')
    want = g[f'logits.{mode}']
    assert logits.dtype == np.float32 and logits.shape == want.shape
    np.testing.assert_allclose(logits, want, rtol=0, atol=tolerance(want))
    response = result.get_response()
    params = response['parameters']
    assert abs(params['compute_fraction'] - float(np.mean(g[f'fraction.{mode}']))) <= 1e-4
    if budget is None:
        assert 'compute_budget' not in params
    else:
        assert params['compute_budget'] == pytest.approx(budget)
    assert response['model_name'] == model
    assert response['model_version'] == '1'


@pytest.mark.parametrize('budget', [None, 0.5, 0.25], ids=['auto', '0.5', '0.25'])
def test_infer_one_image_at_a_time(client, mixed, budget):
    """Should give each image alone the logits and compute fraction it has in the golden batch."""
    mode = BUDGET_MODES[budget]
    for i in range(len(mixed['input'])):
        result = infer(client, 'vit-mixed', mixed['input'][i:i + 1], budget=budget)
        want = mixed[f'logits.{mode}'][i:i + 1]
        np.testing.assert_allclose(result.as_numpy('logits'), want, rtol=0, atol=tolerance(want))
        fraction = result.get_response()['parameters']['compute_fraction']
        assert abs(fraction - float(mixed[f'fraction.{mode}'][i])) <= 1e-4


def test_request_id_echoed(client, mixed):
    """Should echo the request's id."""
    inp = httpclient.InferInput('input', [1, 1, 16, 16], 'FP32')
    inp.set_data_from_numpy(mixed['input'][:1], binary_data=True)
    result = client.infer('vit-mixed', [inp], request_id='req-42')
    assert result.get_response()['id'] == 'req-42'


def test_all_outputs_when_none_asked(client, mixed):
    """Should return every output, logits and labels, when the request names none."""
    inp = httpclient.InferInput('input', [2, 1, 16, 16], 'FP32')
    inp.set_data_from_numpy(mixed['input'][:2], binary_data=True)
    result = client.infer('vit-mixed', [inp])
    names = {o['name'] for o in result.get_response()['outputs']}
    assert names == {'logits', 'labels'}
    np.testing.assert_allclose(result.as_numpy('logits'), mixed['logits.auto'][:2], rtol=0,
                               atol=tolerance(mixed['logits.auto']))


@pytest.mark.parametrize('binary', [False, True], ids=['json', 'binary'])
def test_labels_output(client, mixed, binary):
    """Should name the top-5 classes, best first, as BYTES [n, 5]."""
    labels = model_config('vit_mixed')['labels']
    result = infer(client, 'vit-mixed', mixed['input'], budget=0.5, binary=binary, outputs=('labels',))
    got = result.as_numpy('labels')
    assert got.shape == (4, 5)
    for i, row in enumerate(got):
        top = np.argsort(-mixed['logits.cap_0.5'][i], kind='stable')[:5]
        assert [v.decode() if isinstance(v, bytes) else v for v in row] == [labels[c] for c in top]


@pytest.mark.parametrize('binary', [False, True], ids=['json', 'binary'])
def test_classification(client, mixed, binary):
    """Should answer class_count=3 with Triton's classification strings "score:index:label", best first."""
    labels = model_config('vit_mixed')['labels']
    result = infer(client, 'vit-mixed', mixed['input'], budget=0.5, binary=binary, class_count=3)
    got = result.as_numpy('logits')
    assert got.shape == (4, 3)
    want = mixed['logits.cap_0.5']
    for i, row in enumerate(got):
        top = np.argsort(-want[i], kind='stable')[:3]
        for entry, c in zip(row, top):
            text = entry.decode() if isinstance(entry, bytes) else entry
            score, index, label = text.split(':')
            assert int(index) == c
            assert label == labels[c]
            assert abs(float(score) - want[i][c]) <= tolerance(want) + 1e-5


def test_bytes_input_matches_fp32(client, mixed):
    """Should preprocess a PNG sent as a BYTES input to the logits of the same image preprocessed to FP32."""
    pixels = [grey_pixels(mixed['input'][i]) for i in range(2)]
    images = np.array([png_bytes(p) for p in pixels], dtype=np.object_)
    inp = httpclient.InferInput('input', [2], 'BYTES')
    inp.set_data_from_numpy(images, binary_data=True)
    result = client.infer('vit-mixed', [inp], outputs=[httpclient.InferRequestedOutput('logits')],
                          parameters={'compute_budget': 0.5})
    via_bytes = result.as_numpy('logits')
    x = np.concatenate([preprocess_grey(p) for p in pixels])
    via_fp32 = infer(client, 'vit-mixed', x, budget=0.5).as_numpy('logits')
    assert via_bytes.shape == (2, 10)
    np.testing.assert_allclose(via_bytes, via_fp32, rtol=0, atol=1e-4)


@pytest.mark.parametrize('call, status', [
    (lambda c, x: c.infer('no-such-model', [x]), '404'),
    (lambda c, x: c.infer('vit-mixed', [x], model_version='7'), '404'),
    (lambda c, x: c.infer('vit-mixed', [x], parameters={'compute_budget': 1.5}), '400'),
    (lambda c, x: c.infer('vit-mixed', [x], outputs=[httpclient.InferRequestedOutput('nope')]), '400'),
    (lambda c, x: c.get_model_metadata('no-such-model'), '404'),
], ids=['unknown-model', 'unknown-version', 'budget-1.5', 'unknown-output', 'metadata-unknown-model'])
def test_errors_through_client(client, mixed, call, status):
    """Should report errors as tritonclient's InferenceServerException with the HTTP status and a message."""
    x = httpclient.InferInput('input', [1, 1, 16, 16], 'FP32')
    x.set_data_from_numpy(mixed['input'][:1], binary_data=True)
    with pytest.raises(InferenceServerException) as e:
        call(client, x)
    assert e.value.status() == status
    assert e.value.message() and 'exception occurred in the client' not in e.value.message()


def test_inference_statistics(client, mixed):
    """Should report Triton's statistics extension as tritonclient reads it: one request of two images adds one
    success, two inferences, a queue and a compute entry, and a batch of its size; all models at once too."""
    def stats(model):
        [s] = client.get_inference_statistics(model)['model_stats']
        assert s['name'] == model and s['version'] == '1'
        return s

    before = stats('vit-mixed')
    x = np.concatenate([mixed['input'][:1], mixed['input'][:1]]).astype(np.float32)
    infer(client, 'vit-mixed', x)
    after = stats('vit-mixed')
    assert after['inference_count'] - before['inference_count'] == 2
    assert after['execution_count'] - before['execution_count'] >= 1
    assert after['last_inference'] >= before['last_inference'] > 0 or before['inference_count'] == 0
    b, a = before['inference_stats'], after['inference_stats']
    for key in ('success', 'queue', 'compute_input', 'compute_infer', 'compute_output'):
        assert int(a[key]['count']) - int(b[key]['count']) == 1, key
        assert int(a[key]['ns']) > int(b[key]['ns']), key
    assert int(a['fail']['count']) == int(b['fail']['count'])
    assert any(bs['batch_size'] >= 2 for bs in after['batch_stats'])
    every = {s['name'] for s in client.get_inference_statistics()['model_stats']}
    assert every == set(MODELS)
