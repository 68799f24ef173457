"""Whisper tiny.en served through the Open Inference Protocol: log-mel and WAV inputs from tritonclient, the curl
route, dynamic batching across requests, bad input, metrics, and a drain on SIGTERM. Transcripts are checked against
the same request sent alone and against CTranslate2's (Tests/ACMWhisperTests/Fixtures/clips.json)."""
import io
import json
import os
import signal
import struct
import subprocess
import threading
import time
import wave

import numpy as np
import pytest
import tritonclient.http as httpclient

from harness import (FIXTURES, REPO, Server, error_message, infer, infer_path, metrics, parse_metrics, request,
                     run_clients, sample_value, slow)

MODEL = 'whisper-tiny.en'
FALLBACK = 'whisper-fallback'
MODEL_DIR = os.path.join(REPO, 'build', 'models', 'whisper-tiny.en')
SPEECH_FIXTURES = os.path.join(REPO, 'Tests', 'ACMWhisperTests', 'Fixtures')
# Four clips: 16 kHz mono from both synthesizers, and the 22050 Hz stereo one (downmix and resampling).
CLIPS = ['espeak_us_fox', 'flite_slt_stella', 'espeak_us_stereo', 'flite_kal16_thanks']
CLIENTS = 8
MAX_BATCH = 8
MAX_AUDIO_SECONDS = 130  # this server's max_audio_seconds (600 by default): room for the 2-minute recording


@pytest.fixture(scope='module')
def fallback_dir(tmp_path_factory):
    """The same Whisper with a log-probability threshold no decoding meets: every window runs the whole temperature
    fallback and keeps its likeliest attempt (docs/whisper.md#decoding)."""
    directory = tmp_path_factory.mktemp('models') / FALLBACK
    os.makedirs(directory)
    for name in ('model.safetensors', 'tokenizer.json'):
        os.symlink(os.path.join(MODEL_DIR, name), os.path.join(directory, name))
    with open(os.path.join(MODEL_DIR, 'config.json')) as f:
        config = json.load(f)
    config['generation']['logprob_threshold'] = 0.0
    with open(os.path.join(directory, 'config.json'), 'w') as f:
        json.dump(config, f)
    return str(directory)


@pytest.fixture(scope='module')
def server(fallback_dir):
    """acm-serve with Whisper (batches of up to 8 utterances, 20 ms to fill), the same Whisper decoding every window
    at every fallback temperature, and an image model beside them."""
    assert os.path.isdir(MODEL_DIR), f'build the Whisper model first (make whisper-model); looked for {MODEL_DIR}'
    s = Server(models={
        MODEL: {'path': MODEL_DIR, 'max_batch_size': MAX_BATCH, 'max_queue_delay_microseconds': 20000,
                'max_audio_seconds': MAX_AUDIO_SECONDS},
        FALLBACK: {'path': fallback_dir},
        'vit-mixed': {'path': os.path.join(FIXTURES, 'vit_mixed')},
    })
    yield s
    s.close()


@pytest.fixture(scope='module')
def client(server):
    c = httpclient.InferenceServerClient(server.url, connection_timeout=slow(60), network_timeout=slow(60))
    yield c
    c.close()


@pytest.fixture(scope='module')
def clips():
    """name -> (WAV bytes, CTranslate2's ids and text)"""
    with open(os.path.join(SPEECH_FIXTURES, 'clips.json')) as f:
        table = {c['name']: c for c in json.load(f)}
    out = {}
    for name in CLIPS:
        with open(os.path.join(SPEECH_FIXTURES, table[name]['file']), 'rb') as f:
            out[name] = (f.read(), table[name]['ct2'])
    return out


@pytest.fixture(scope='module')
def mels():
    """name -> float32 [80, 3000]: the reference's NumPy log-mel of the clip."""
    from acm_tools.whisper_ref import load_audio, log_mel
    return {name: log_mel(load_audio(os.path.join(SPEECH_FIXTURES, 'clips', f'{name}.wav'))) for name in CLIPS}


def speech_infer(client, *, audio=None, mel=None, binary=True, parameters=None, model=MODEL):
    """One tritonclient request: audio (a list of WAV bytes) or mel ([n, 80, 3000]). -> (texts, token rows, params)"""
    if audio is not None:
        inp = httpclient.InferInput('audio', [len(audio)], 'BYTES')
        inp.set_data_from_numpy(np.array(audio, dtype=np.object_), binary_data=True)
    else:
        inp = httpclient.InferInput('log_mel', list(mel.shape), 'FP32')
        inp.set_data_from_numpy(mel.astype(np.float32), binary_data=True)
    outputs = [httpclient.InferRequestedOutput(o, binary_data=binary) for o in ('text', 'tokens')]
    result = client.infer(model, [inp], outputs=outputs, parameters=parameters)
    texts = [t.decode() if isinstance(t, bytes) else t for t in result.as_numpy('text').reshape(-1)]
    tokens = result.as_numpy('tokens')
    assert tokens.dtype == np.int32 and tokens.shape[0] == len(texts), tokens.shape
    rows = [[int(t) for t in row if t != -1] for row in tokens]
    return texts, rows, result.get_response()['parameters']


@pytest.fixture(scope='module')
def alone(client, clips):
    """name -> (text, ids) of the clip's WAV sent alone, with JSON outputs."""
    out = {}
    for name, (wav, _) in clips.items():
        texts, rows, params = speech_infer(client, audio=[wav], binary=False)
        assert params == {'compute_fraction': 1.0, 'temperature': 0.0, 'compute_budget_applied': False}
        out[name] = (texts[0], rows[0])
    return out


def still_serving(server):
    assert request(server.port, 'GET', '/v2/health/ready')[0] == 200
    assert request(server.port, 'GET', f'/v2/models/{MODEL}/ready')[0] == 200
    assert server.proc.poll() is None


def test_metadata(client):
    """Should describe the speech inputs (log_mel FP32, audio BYTES) and outputs (text BYTES, tokens INT32)."""
    meta = client.get_model_metadata(MODEL)
    assert meta['inputs'] == [{'name': 'log_mel', 'datatype': 'FP32', 'shape': [-1, 80, 3000]},
                              {'name': 'audio', 'datatype': 'BYTES', 'shape': [-1]}]
    assert meta['outputs'] == [{'name': 'text', 'datatype': 'BYTES', 'shape': [-1]},
                               {'name': 'tokens', 'datatype': 'INT32', 'shape': [-1, -1]}]
    config = client.get_model_config(MODEL)
    assert config['max_batch_size'] == MAX_BATCH
    assert {i['name']: i['data_type'] for i in config['input']} == {'log_mel': 'TYPE_FP32', 'audio': 'TYPE_STRING'}
    assert all(i['optional'] for i in config['input'])
    assert {o['name']: o['data_type'] for o in config['output']} == {'text': 'TYPE_STRING', 'tokens': 'TYPE_INT32'}
    assert client.is_model_ready(MODEL)


def test_alone_matches_ctranslate2(clips, alone):
    """Should transcribe each WAV sent alone as CTranslate2 does: the same token ids and text."""
    for name, (_, ct2) in clips.items():
        assert alone[name] == (ct2['text'], ct2['ids']), name


def test_concurrent_clients(server, client, clips, mels, alone):
    """Should answer 8 concurrent clients sending log-mels and WAVs with the transcripts sent alone, in batches > 1."""
    before = parse_metrics(metrics(server.port))
    # client i: clip i % 4, as a log-mel (even i) or as WAV (odd i); every other one with a compute_budget
    jobs = [(CLIPS[i % len(CLIPS)], 'mel' if i % 2 == 0 else 'audio', 0.5 if i % 4 < 2 else None)
            for i in range(CLIENTS)]

    def run(i):
        name, kind, budget = jobs[i]
        c = httpclient.InferenceServerClient(server.url, connection_timeout=slow(120), network_timeout=slow(120))
        try:
            params = None if budget is None else {'compute_budget': budget}
            if kind == 'mel':
                return speech_infer(c, mel=mels[name][None], parameters=params)
            return speech_infer(c, audio=[clips[name][0]], parameters=params)
        finally:
            c.close()

    answers = run_clients(CLIENTS, run, label=lambda i: f'{i} {jobs[i]}')
    for i, (name, kind, budget) in enumerate(jobs):
        texts, rows, params = answers[i]
        ct2 = clips[name][1]
        assert (texts[0], rows[0]) == alone[name], f'client {i} ({name}, {kind})'
        assert (texts[0], rows[0]) == (ct2['text'], ct2['ids']), f'client {i} ({name}, {kind})'
        assert params['compute_budget_applied'] is False and params['compute_fraction'] == 1.0
        assert params.get('compute_budget') == budget

    after = parse_metrics(metrics(server.port))

    def delta(name, **labels):
        return sample_value(after, name, model=MODEL, **labels) - sample_value(before, name, model=MODEL, **labels)

    assert delta('acm_request_success_total') == CLIENTS
    assert delta('acm_inference_total') == CLIENTS
    batches = delta('acm_batch_execution_total')
    assert delta('acm_batch_size_utterances_count') == batches
    assert delta('acm_batch_size_utterances_sum') == CLIENTS
    assert batches < CLIENTS, f'{batches} batches for {CLIENTS} requests: no two requests ran together'


def test_batched_request(server, client, clips, mels):
    """Should transcribe a request of several utterances (log_mel [2, 80, 3000]; audio [2]), tokens padded with -1."""
    names = CLIPS[:2]
    want = [(clips[n][1]['text'], clips[n][1]['ids']) for n in names]
    texts, rows, _ = speech_infer(client, mel=np.stack([mels[n] for n in names]))
    assert list(zip(texts, rows)) == want
    # the same through the raw protocol with JSON outputs: the padding is visible there
    wavs = [clips[n][0] for n in names]
    raw = b''.join(struct.pack('<I', len(w)) + w for w in wavs)
    head = json.dumps({'inputs': [{'name': 'audio', 'shape': [2], 'datatype': 'BYTES',
                                   'parameters': {'binary_data_size': len(raw)}}]}).encode()
    status, headers, body = request(server.port, 'POST', infer_path(MODEL), head + raw,
                                    {'Inference-Header-Content-Length': str(len(head))}, timeout=120)
    assert status == 200, body[:300]
    answer = json.loads(body)
    out = {o['name']: o for o in answer['outputs']}
    assert out['text'] == {'name': 'text', 'datatype': 'BYTES', 'shape': [2], 'data': [t for t, _ in want]}
    length = max(len(ids) for _, ids in want)
    assert out['tokens']['datatype'] == 'INT32' and out['tokens']['shape'] == [2, length]
    assert out['tokens']['data'] == [i for _, ids in want for i in ids + [-1] * (length - len(ids))]


def curl(url, path, content_type='audio/wav'):
    out = subprocess.run(['curl', '-s', '-S', '--max-time', '60', '-w', '\n%{http_code}', '--data-binary', f'@{path}',
                          '-H', f'Content-Type: {content_type}', url], capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr
    body, _, code = out.stdout.rpartition('\n')
    return int(code), body


def test_curl_transcribe(server, clips):
    """Should answer a WAV posted with curl to /transcribe with its text and tokens, and accept (not apply) a budget."""
    name = 'espeak_us_stereo'
    path = os.path.join(SPEECH_FIXTURES, 'clips', f'{name}.wav')
    code, body = curl(f'http://{server.url}/v2/models/{MODEL}/transcribe?compute_budget=0.5', path)
    assert code == 200, body
    answer = json.loads(body)
    ct2 = clips[name][1]
    assert answer == {'model_name': MODEL, 'text': ct2['text'], 'tokens': ct2['ids'], 'compute_fraction': 1.0,
                      'temperature': 0.0, 'compute_budget_applied': False, 'compute_budget': 0.5}


def test_fallback_temperature(server, client, clips, fallback_dir):
    """Should answer with the highest temperature the request's utterances were decoded at, the engine's tokens
    (acm-serve transcribe on the same model), and count each utterance under its temperature in the metrics."""
    from harness import BIN
    names = list(clips)
    texts, rows, params = speech_infer(client, audio=[clips[n][0] for n in names], model=FALLBACK)
    args = [BIN, 'transcribe', '--model', fallback_dir, '--json']
    for n in names:
        args += ['--audio', os.path.join(SPEECH_FIXTURES, 'clips', f'{n}.wav')]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=300).stdout
    engine = [json.loads(line) for line in out.splitlines()]
    assert rows == [e['tokens'] for e in engine]
    assert [t.strip() for t in texts] == [e['text'] for e in engine]
    temperatures = [e['temperature'] for e in engine]
    assert params['temperature'] == max(temperatures) > 0, (params, temperatures)
    families = parse_metrics(metrics(server.port))
    for t in [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]:
        label = '0' if t == 0 else str(t)
        want = sum(x == pytest.approx(t) for x in temperatures)
        assert sample_value(families, 'acm_speech_decodes_total', model=FALLBACK, temperature=label) == want, label


# -----------------------------------------------------------------------------
# bad input


def wav_bytes(samples, rate=16000, channels=1, float32=False):
    """A WAV file of int16 (or float32, as WAVE_FORMAT_IEEE_FLOAT) samples [frames * channels]."""
    if not float32:
        buf = io.BytesIO()
        with wave.open(buf, 'wb') as w:
            w.setnchannels(channels)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes(np.asarray(samples, '<i2').tobytes())
        return buf.getvalue()
    data = np.asarray(samples, '<f4').tobytes()
    fmt = struct.pack('<HHIIHH', 3, channels, rate, rate * channels * 4, channels * 4, 32)
    chunks = b'fmt ' + struct.pack('<I', len(fmt)) + fmt + b'data' + struct.pack('<I', len(data)) + data
    return b'RIFF' + struct.pack('<I', 4 + len(chunks)) + b'WAVE' + chunks


def speech_body(inputs, outputs=None, parameters=None):
    """A request body of inputs [(name, datatype, shape, binary bytes or JSON data)]. -> (body, headers)"""
    header, tail = {'inputs': []}, b''
    for name, datatype, shape, data in inputs:
        inp = {'name': name, 'datatype': datatype, 'shape': shape}
        if isinstance(data, bytes):
            inp['parameters'] = {'binary_data_size': len(data)}
            tail += data
        else:
            inp['data'] = data
        header['inputs'].append(inp)
    if outputs is not None:
        header['outputs'] = outputs
    if parameters is not None:
        header['parameters'] = parameters
    head = json.dumps(header).encode()
    return head + tail, {'Inference-Header-Content-Length': str(len(head))}


def elements(*items):
    """Triton's BYTES binary layout."""
    return b''.join(struct.pack('<I', len(b)) + b for b in items)


def mel_bytes(n=1, value=0.0):
    x = np.full((n, 80, 3000), -0.5, np.float32)
    x.flat[123] = value
    return x.tobytes()


def mel(shape, data=None, datatype='FP32'):
    """A log_mel input of shape, with data (binary) of n log-mels by default."""
    return ('log_mel', datatype, shape, mel_bytes(shape[0] if len(shape) == 3 else 1) if data is None else data)


def audio(*files, shape=None):
    """An audio input of these files, of shape [len(files)] by default."""
    return ('audio', 'BYTES', shape or [len(files)], elements(*files))


SILENCE = wav_bytes(np.zeros(1600, np.int16))
TOO_LONG = wav_bytes(np.zeros(8000 * (MAX_AUDIO_SECONDS + 1), np.int16), rate=8000)
NAN_WAV = wav_bytes(np.full(1600, np.nan), float32=True)
BAD = {
    # name: (inputs, outputs, parameters, what the error says)
    'log_mel-wrong-shape': ([mel([1, 80, 2999], mel_bytes()[:80 * 2999 * 4])], None, None, 'shape'),
    'log_mel-rank-4': ([mel([1, 1, 80, 3000])], None, None, 'shape'),
    'log_mel-int32': ([mel([1, 80, 3000], datatype='INT32')], None, None, 'datatype'),
    'log_mel-size-mismatch': ([mel([1, 80, 3000], mel_bytes()[:-4])], None, None, 'binary bytes'),
    'log_mel-nan': ([mel([1, 80, 3000], mel_bytes(value=np.nan))], None, None, 'NaN'),
    'log_mel-inf': ([mel([80, 3000], mel_bytes(value=np.inf))], None, None, 'NaN'),
    'log_mel-over-max-batch': ([mel([MAX_BATCH + 1, 80, 3000])], None, None, 'batch-size'),
    'audio-undecodable': ([audio(b'this is not audio at all')], None, None, 'cannot decode audio'),
    'audio-empty-bytes': ([audio(b'')], None, None, 'cannot decode audio'),
    'audio-no-samples': ([audio(wav_bytes(np.zeros(0, np.int16)))], None, None, 'no samples'),
    'audio-too-long': ([audio(TOO_LONG)], None, None, f'at most {MAX_AUDIO_SECONDS} s'),
    'audio-nan-samples': ([audio(NAN_WAV)], None, None, 'NaN'),
    'audio-fp32': ([('audio', 'FP32', [1], np.zeros(1, np.float32).tobytes())], None, None, 'datatype'),
    'audio-count-mismatch': ([audio(SILENCE, shape=[2])], None, None, 'elements'),
    'audio-over-max-batch': ([audio(*[SILENCE] * (MAX_BATCH + 1))], None, None, 'batch-size'),
    'both-inputs': ([mel([1, 80, 3000]), audio(SILENCE)], None, None, 'not both'),
    'no-inputs': ([], None, None, 'expected 1 input'),
    'image-input-name': ([('input', 'FP32', [1, 80, 3000], mel_bytes())], None, None, 'unexpected input'),
    'unknown-output': ([audio(SILENCE)], [{'name': 'logits'}], None, 'unknown output'),
    'classification': ([audio(SILENCE)], [{'name': 'text', 'parameters': {'classification': 3}}], None,
                       'classification'),
    'budget-1.5': ([audio(SILENCE)], None, {'compute_budget': 1.5}, 'compute_budget'),
    'budget-0': ([audio(SILENCE)], None, {'compute_budget': 0}, 'compute_budget'),
}


@pytest.mark.parametrize('case', BAD)
def test_bad_infer(server, case):
    """Should refuse a misshapen, mistyped, non-finite or undecodable speech request with 400 and say why."""
    inputs, outputs, parameters, says = BAD[case]
    body, headers = speech_body(inputs, outputs, parameters)
    status, rh, data = request(server.port, 'POST', infer_path(MODEL), body, headers)
    assert status == 400, data[:300]
    assert says in error_message(status, rh, data)
    still_serving(server)


@pytest.mark.parametrize('path, body, status', [
    (f'/v2/models/{MODEL}/transcribe', b'', 400),
    (f'/v2/models/{MODEL}/transcribe', b'RIFF\x00\x00\x00\x00WAVEjunk', 400),
    (f'/v2/models/{MODEL}/transcribe?compute_budget=abc', SILENCE, 400),
    (f'/v2/models/{MODEL}/transcribe?compute_budget=0', SILENCE, 400),
    (f'/v2/models/{MODEL}/classify', SILENCE, 404),
    ('/v2/models/vit-mixed/transcribe', SILENCE, 404),
])
def test_bad_route(server, path, body, status):
    """Should refuse bad /transcribe bodies and budgets with 400, and the other kind's curl route with 404."""
    got, headers, data = request(server.port, 'POST', path, body, {'Content-Type': 'audio/wav'})
    assert got == status, data[:300]
    message = error_message(got, headers, data)
    if status == 404:
        assert 'speech model' in message or 'image model' in message, message
    still_serving(server)


def test_image_model_unaffected(server):
    """Should still serve the image model next to the speech model."""
    from harness import golden, tolerance
    g = golden('vit_mixed')
    status, _, header, arrays = infer(server.port, 'vit-mixed', g['input'][:2], budget=0.5)
    assert status == 200, header
    want = g['logits.cap_0.5'][:2]
    np.testing.assert_allclose(arrays['logits'], want, rtol=0, atol=tolerance(want))


def test_metrics(server):
    """Should export the speech model's request, batch and compute-fraction series (promtool-clean); a dense
    model has no layer series, and its every request ran whole (fraction 1)."""
    text = metrics(server.port)
    lint = subprocess.run(['promtool', 'check', 'metrics'], input=text, capture_output=True, text=True, timeout=30)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    families = parse_metrics(text)
    assert sample_value(families, 'acm_request_success_total', model=MODEL) >= 1
    assert sample_value(families, 'acm_request_failure_total', model=MODEL, reason='bad_request') >= len(BAD)
    speech = {s.name for f in families for s in f.samples if s.labels.get('model') == MODEL}
    for name in ['acm_inference_total', 'acm_batch_execution_total', 'acm_pending_requests',
                 'acm_request_duration_seconds_count', 'acm_queue_duration_seconds_count',
                 'acm_compute_duration_seconds_count', 'acm_batch_size_utterances_count',
                 'acm_compute_fraction_ratio_count', 'acm_compute_budget_ratio_count', 'acm_budget_mode_requests_total']:
        assert name in speech, name
    for name in ['acm_layer_tokens_total', 'acm_batch_size_images_count']:
        assert name not in speech, name
    count = sample_value(families, 'acm_compute_fraction_ratio_count', model=MODEL)
    assert count >= 1 and sample_value(families, 'acm_compute_fraction_ratio_sum', model=MODEL) == count


# -----------------------------------------------------------------------------
# overload and shutdown


def test_queue_full_then_sigterm(clips):
    """Should answer 503 + Retry-After when the speech queue is full, and every accepted request after SIGTERM."""
    s = Server(models={MODEL: {'path': MODEL_DIR, 'max_batch_size': 1, 'max_queue_delay_microseconds': 0,
                               'max_queue_size': 1}})
    try:
        wav, ct2 = clips['flite_kal16_thanks']
        body, headers = speech_body([('audio', 'BYTES', [1], elements(wav))], outputs=[{'name': 'text'}])
        results, lock = [], threading.Lock()
        start = threading.Barrier(5)

        def run():
            start.wait(30)
            got = request(s.port, 'POST', infer_path(MODEL), body, headers, timeout=120)
            with lock:
                results.append(got)

        threads = [threading.Thread(target=run) for _ in range(4)]
        for t in threads:
            t.start()
        start.wait(30)
        # One runs and one waits; the other two are refused at once. SIGTERM once they are: the two accepted
        # requests are then still running or queued.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with lock:
                if sum(r[0] == 503 for r in results) >= 2 or len(results) == 4:
                    break
            time.sleep(0.01)
        s.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(120)
        assert s.proc.wait(30) == 0, s.log_tail()
        statuses = sorted(r[0] for r in results)
        assert len(statuses) == 4 and 503 in statuses and 200 in statuses, statuses
        for status, rh, data in results:
            if status == 503:
                # Queue full (worth a retry: Retry-After), or, for a request still being read at SIGTERM, shutting down.
                message = error_message(status, rh, data)
                assert rh.get('retry-after') or 'shutting down' in message, (rh, message)
            else:
                assert status == 200, data[:300]
                assert json.loads(data)['outputs'][0]['data'] == [ct2['text']]
    finally:
        s.kill()
        s.log.close()


def test_long_audio(server, client):
    """Should transcribe a 2-minute recording in consecutive 30-s windows: four 16 kHz clips, one at the start
    of each window, give CTranslate2's tokens for each clip alone, one after the other (each window is that
    clip padded with silence, as a 30-s input of it alone is), through /infer and through /transcribe."""
    with open(os.path.join(SPEECH_FIXTURES, 'clips.json')) as f:
        table = {c['name']: c for c in json.load(f)}
    names = ['espeak_us_fox', 'flite_slt_stella', 'espeak_us_weather', 'flite_kal16_thanks']
    recording = np.zeros(16000 * 120, np.int16)
    for w, name in enumerate(names):
        with wave.open(os.path.join(SPEECH_FIXTURES, table[name]['file']), 'rb') as f:
            assert f.getframerate() == 16000 and f.getnchannels() == 1
            clip = np.frombuffer(f.readframes(f.getnframes()), '<i2')
        recording[w * 16000 * 30:w * 16000 * 30 + len(clip)] = clip
    body = wav_bytes(recording)
    want = [i for name in names for i in table[name]['ct2']['ids']]
    texts, tokens, params = speech_infer(client, audio=[body])
    assert [t for t in tokens[0] if t != -1] == want
    assert texts[0] == ''.join(table[name]['ct2']['text'] for name in names)
    status, _, data = request(server.port, 'POST', f'/v2/models/{MODEL}/transcribe', body, {'Content-Type': 'audio/wav'})
    assert status == 200, data[:300]
    assert json.loads(data)['tokens'] == want


def test_shutdown_grace_answers_the_queue_with_503(clips):
    """Should answer the requests still queued when shutdown_grace_seconds runs out with 503 (not run), every
    other accepted request with its transcript, drop no connection, and exit soon after the grace period."""
    grace = 0.5
    s = Server(models={MODEL: {'path': MODEL_DIR, 'max_batch_size': 1, 'max_queue_delay_microseconds': 0,
                               'max_queue_size': 32}},
               settings={'shutdown_grace_seconds': grace})
    try:
        wav, ct2 = clips['flite_kal16_thanks']
        body, headers = speech_body([('audio', 'BYTES', [1], elements(wav))], outputs=[{'name': 'text'}])
        clients = 16
        results, lock = [], threading.Lock()
        start = threading.Barrier(clients + 1)

        def run():
            start.wait(30)
            try:
                got = request(s.port, 'POST', infer_path(MODEL), body, headers, timeout=120)
            except OSError as e:
                got = (0, {}, f'{type(e).__name__}: {e}'.encode())
            with lock:
                results.append(got)

        threads = [threading.Thread(target=run) for _ in range(clients)]
        for t in threads:
            t.start()
        start.wait(30)
        # SIGTERM once most requests wait in the queue (one batch of one runs at a time).
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            families = parse_metrics(metrics(s.port))
            if sample_value(families, 'acm_pending_requests', model=MODEL) >= clients // 2:
                break
            time.sleep(0.01)
        signalled = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(30) == 0, s.log_tail()
        exited = time.monotonic() - signalled
        for t in threads:
            t.join(60)
        statuses = sorted(r[0] for r in results)
        print(f'exit {exited:.2f} s after SIGTERM; statuses {statuses}')
        assert len(statuses) == clients and set(statuses) <= {200, 503}, results
        assert 503 in statuses, f'nothing was left queued at the end of a {grace}-s grace period: {statuses}'
        assert exited < grace + 5, f'exit took {exited:.2f} s'
        abandoned = 0
        for status, rh, data in results:
            if status == 503:
                # Queued at the deadline ("... not run"), or arrived after SIGTERM.
                message = error_message(status, rh, data)
                assert 'shutting down' in message, message
                abandoned += 'not run' in message
            else:
                assert json.loads(data)['outputs'][0]['data'] == [ct2['text']]
        assert abandoned >= 1, 'no queued request was answered at the deadline'
        assert 'requests still queued get 503' in s.log_tail(50)
    finally:
        s.kill()
        s.log.close()
