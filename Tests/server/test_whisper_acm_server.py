"""The ACMized Whisper tiny.en (build/models/whisper-tiny.en-acm, assembled by `make whisper-model` from
models/whisper-tiny.en-acm) served with per-request compute budgets: concurrent clients with mixed budgets in
shared batches each get the transcript and compute fraction of their request sent alone; the fraction stays
within the budget; the curl route and long audio apply budgets; a bad budget gets 400; the learner metrics."""
import io
import json
import os

import numpy as np
import pytest
import tritonclient.http as httpclient

from harness import (REPO, Server, error_message, infer_path, metrics, parse_metrics, request, run_clients,
                     sample_value)
# clips and mels are that module's fixtures (name -> (WAV bytes, CTranslate2's ids and text); name -> log-mel)
from test_whisper_server import (CLIPS, SPEECH_FIXTURES, audio, clips, curl, mels, speech_body,  # noqa: F401
                                 speech_infer, wav_bytes)

MODEL = 'whisper-tiny.en-acm'
MODEL_DIR = os.path.join(REPO, 'build', 'models', 'whisper-tiny.en-acm')
BUDGETS = [None, 0.5, 0.25, 1.0, 0.75]  # None: no compute_budget, the gates alone (auto)
CLIENTS = 10
MAX_BATCH = 8


@pytest.fixture(scope='module')
def server():
    assert os.path.isdir(MODEL_DIR), f'build the ACM Whisper model first (make whisper-model); looked for {MODEL_DIR}'
    s = Server(models={MODEL: {'path': MODEL_DIR, 'max_batch_size': MAX_BATCH,
                               'max_queue_delay_microseconds': 50000, 'max_audio_seconds': 130}})
    yield s
    s.close()


def transcribe(client, *, wav=None, mel=None, budget=None):
    """One tritonclient request of one utterance, a WAV or a log-mel [80, 3000] -> (text, ids, response parameters)."""
    texts, rows, params = speech_infer(
        client, audio=None if wav is None else [wav], mel=None if mel is None else mel[None],
        parameters=None if budget is None else {'compute_budget': budget}, model=MODEL)
    return texts[0], rows[0], params


def check_parameters(params, budget):
    assert params['compute_budget_applied'] is True
    assert params.get('compute_budget') == budget
    assert 0 < params['compute_fraction'] <= (budget or 1.0) + 1e-9, params


def jobs():
    """Client i: clip i % 4, as a log-mel (even i) or a WAV (odd i), under budget i % 5."""
    return [(CLIPS[i % len(CLIPS)], 'mel' if i % 2 == 0 else 'wav', BUDGETS[i % len(BUDGETS)]) for i in range(CLIENTS)]


@pytest.fixture(scope='module')
def alone(server, clips, mels):
    """(clip, kind, budget) -> (text, ids, parameters) of that request sent alone."""
    c = httpclient.InferenceServerClient(server.url, connection_timeout=120, network_timeout=120)
    try:
        out = {}
        for name, kind, budget in set(jobs()):
            out[name, kind, budget] = transcribe(c, budget=budget, **({'wav': clips[name][0]} if kind == 'wav'
                                                                       else {'mel': mels[name]}))
        return out
    finally:
        c.close()


def test_alone_within_budget(alone):
    """Should report compute_budget_applied, the budget echoed, a fraction within it, and a transcript."""
    for (name, kind, budget), (text, ids, params) in alone.items():
        check_parameters(params, budget)
        assert text.strip() and ids, (name, kind, budget)
    fractions = {b: max(p['compute_fraction'] for (_, _, bb), (_, _, p) in alone.items() if bb == b) for b in BUDGETS}
    assert fractions[0.25] < fractions[0.5] < fractions[1.0] + 1e-9


def test_mixed_budgets_in_one_batch(server, clips, mels, alone):
    """Should give 10 concurrent clients with five different budgets (log-mels and WAVs) the transcript, tokens
    and compute fraction of their request sent alone, while their requests share batches."""
    before = parse_metrics(metrics(server.port))
    work = jobs()

    def run(i):
        name, kind, budget = work[i]
        c = httpclient.InferenceServerClient(server.url, connection_timeout=120, network_timeout=120)
        try:
            return transcribe(c, budget=budget, **({'wav': clips[name][0]} if kind == 'wav' else {'mel': mels[name]}))
        finally:
            c.close()

    answers = run_clients(CLIENTS, run, label=lambda i: f'{i} {work[i]}')
    for i, job in enumerate(work):
        text, ids, params = answers[i]
        want_text, want_ids, want_params = alone[job]
        assert (text, ids) == (want_text, want_ids), f'client {i} {job}'
        assert params == want_params, f'client {i} {job}'
    after = parse_metrics(metrics(server.port))

    def delta(metric, **labels):
        return sample_value(after, metric, model=MODEL, **labels) - sample_value(before, metric, model=MODEL, **labels)

    batches = delta('acm_batch_execution_total')
    assert delta('acm_batch_size_utterances_sum') == CLIENTS
    assert batches < CLIENTS, f'{batches} batches for {CLIENTS} requests: no two requests ran together'
    assert delta('acm_budget_mode_requests_total', mode='budget') == sum(b is not None for _, _, b in work)
    assert delta('acm_budget_mode_requests_total', mode='auto') == sum(b is None for _, _, b in work)


def test_curl_budget(server, alone):
    """Should apply ?compute_budget= on /transcribe as the same budget through /infer does (same WAV)."""
    name = 'flite_kal16_thanks'  # client 7's request
    code, body = curl(f'http://{server.url}/v2/models/{MODEL}/transcribe?compute_budget=0.25',
                      os.path.join(SPEECH_FIXTURES, 'clips', f'{name}.wav'))
    assert code == 200, body
    answer = json.loads(body)
    text, ids, params = alone[name, 'wav', 0.25]
    assert answer == {'model_name': MODEL, 'text': text, 'tokens': ids, 'compute_fraction': params['compute_fraction'],
                      'temperature': params['temperature'], 'compute_budget_applied': True, 'compute_budget': 0.25}


@pytest.mark.parametrize('budget', [0, -0.5, 1.5, 'abc', None])
def test_bad_budget(server, budget):
    """Should refuse a compute_budget outside (0, 1], or not a number, with 400 through /infer and /transcribe."""
    silence = wav_bytes(np.zeros(1600, np.int16))
    body, headers = speech_body([audio(silence)], parameters={'compute_budget': budget})
    status, rh, data = request(server.port, 'POST', infer_path(MODEL), body, headers)
    assert status == 400, data[:300]
    assert 'compute_budget' in error_message(status, rh, data)
    if budget is not None:
        status, rh, data = request(server.port, 'POST', f'/v2/models/{MODEL}/transcribe?compute_budget={budget}',
                                   silence, {'Content-Type': 'audio/wav'})
        assert status == 400, data[:300]
        assert 'compute_budget' in error_message(status, rh, data)
    assert request(server.port, 'GET', f'/v2/models/{MODEL}/ready')[0] == 200


def test_long_audio_under_budget(server, clips):
    """Should transcribe a 70-s recording in three 30-s windows under a budget, each window as its clip sent
    alone under that budget (a clip at the start of each window: the window is that clip padded with silence),
    within the budget."""
    import wave
    names = ['espeak_us_fox', 'flite_slt_stella', 'flite_kal16_thanks']
    recording = np.zeros(16000 * 70, np.int16)
    for w, name in enumerate(names):
        with wave.open(io.BytesIO(clips[name][0]), 'rb') as f:
            assert f.getframerate() == 16000 and f.getnchannels() == 1
            clip = np.frombuffer(f.readframes(f.getnframes()), '<i2')
        recording[w * 16000 * 30:w * 16000 * 30 + len(clip)] = clip
    c = httpclient.InferenceServerClient(server.url, connection_timeout=120, network_timeout=120)
    try:
        each = [transcribe(c, wav=clips[name][0], budget=0.5) for name in names]
        text, ids, params = transcribe(c, wav=wav_bytes(recording), budget=0.5)
    finally:
        c.close()
    check_parameters(params, 0.5)
    assert ids == [i for _, clip_ids, _ in each for i in clip_ids]
    assert text == ''.join(t for t, _, _ in each)


def test_layer_metrics(server, alone):
    """Should count every encoder frame of every ACM layer under the one k it ran (1..N: the model's k_min is 1)."""
    with open(os.path.join(MODEL_DIR, 'config.json')) as f:
        acm = json.load(f)['acm']
    assert {c['min_choice'] for c in acm.values()} == {1}
    (n,) = {c['num_learners'] for c in acm.values()}
    families = parse_metrics(metrics(server.port))
    layers = {}
    for f in families:
        for s in f.samples:
            if s.name == 'acm_layer_tokens_total' and s.labels.get('model') == MODEL:
                layers.setdefault(s.labels['layer'], {})[int(s.labels['k'])] = s.value
    assert sorted(layers) == [f'model.encoder.layers.{i}' for i in range(4)], sorted(layers)
    for layer, by_k in layers.items():
        assert sorted(by_k) == list(range(1, n + 1)), (layer, by_k)
        total = sum(by_k.values())
        assert total > 0 and total % 1500 == 0, (layer, total)  # whole utterances of 1,500 encoder frames
    assert len({sum(v.values()) for v in layers.values()}) == 1  # every layer saw the same frames
