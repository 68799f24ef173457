"""The demo page at `/`, in headless Chromium (selenium, Debian's chromium and chromium-driver): a bundled image and an
uploaded PNG classified at the slider's budget, the labels, compute fraction and per-patch heatmap the page shows
checked against direct /classify?heatmap=1 calls; a dense model; the speech panel; and the page with API keys on."""
import base64
import json
import os
import shutil

import numpy as np
import pytest

from harness import REPO, Server, png_bytes, request
from test_patch_learners import ACM, DENSE, MODELS, fashion_test_images

from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

SPEECH = 'whisper-tiny.en-acm'
SPEECH_DIR = os.path.join(REPO, 'build', 'models', SPEECH)
CLIP = os.path.join(REPO, 'Tests', 'ACMWhisperTests', 'Fixtures', 'clips', 'espeak_us_fox.wav')
KEY = 'demo-test-key-0123456789abcdef'
WAIT = 60  # seconds, for a loaded machine; an image takes milliseconds, Whisper a second or two


def chromium_paths():
    browser = shutil.which('chromium') or shutil.which('chromium-browser')
    driver = shutil.which('chromedriver')
    assert browser and driver, 'needs Debian chromium and chromium-driver (scripts/setup installs them)'
    return browser, driver


@pytest.fixture(scope='module')
def browser():
    from selenium.webdriver.chrome.service import Service
    binary, driver_path = chromium_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ('--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--window-size=1280,1000'):
        options.add_argument(arg)
    # an explicit driver: Selenium Manager would otherwise look for one on the network
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(WAIT)
    yield driver
    driver.quit()


@pytest.fixture(scope='module')
def server():
    models = {ACM: {'path': os.path.join(MODELS, ACM)}, DENSE: {'path': os.path.join(MODELS, DENSE)}}
    if os.path.exists(os.path.join(SPEECH_DIR, 'config.json')):
        models[SPEECH] = {'path': SPEECH_DIR, 'max_batch_size': 2}
    s = Server(models=models)
    yield s
    s.close()


def js(driver, script, *args):
    return driver.execute_script(script, *args)


def wait_result(driver, panel, seq):
    """Waits for the panel's request number `seq` to finish. -> its state ('done' or 'error')"""
    el = driver.find_element(By.ID, panel)
    WebDriverWait(driver, WAIT).until(lambda d: int(el.get_attribute('data-seq')) >= seq)
    return el.get_attribute('data-state')


def shown(driver):
    """What the image panel shows: labels, compute fraction, budget and the heatmap's values [rows, cols]."""
    labels = [(li.get_attribute('data-label'), float(li.get_attribute('data-probability')))
              for li in driver.find_elements(By.CSS_SELECTOR, '#labels li')]
    cells = driver.find_elements(By.CSS_SELECTOR, '#heatmap-values td')
    grid = {}
    for td in cells:
        grid[(int(td.get_attribute('data-row')), int(td.get_attribute('data-col')))] = float(td.get_attribute('data-value'))
    heat = None
    if grid:
        n = max(r for r, _ in grid) + 1
        heat = np.array([[grid[(r, c)] for c in range(n)] for r in range(n)])
    fraction = driver.find_element(By.ID, 'compute-fraction').get_attribute('data-value')
    return {'labels': labels, 'fraction': float(fraction), 'budget': driver.find_element(By.ID, 'budget-used').text,
            'heatmap': heat}


def classify(server, png, budget=None, model=ACM, heatmap=True):
    q = []
    if budget is not None:
        q.append(f'compute_budget={budget}')
    if heatmap:
        q.append('heatmap=1')
    status, _, body = request(server.port, 'POST', f'/v2/models/{model}/classify?' + '&'.join(q), png)
    assert status == 200, body
    return json.loads(body)


def check_same(page, direct):
    assert [label for label, _ in page['labels']] == [t['label'] for t in direct['labels']]
    for (_, p), t in zip(page['labels'], direct['labels']):
        assert abs(p - t['probability']) < 1e-6
    assert abs(page['fraction'] - direct['compute_fraction']) < 1e-9
    if 'patch_learners' in direct:
        np.testing.assert_allclose(page['heatmap'], np.array(direct['patch_learners']), rtol=0, atol=1e-9)
    else:
        assert page['heatmap'] is None


def set_slider(driver, slider_id, value):
    """Moves a range input as a user's drag ends: its value, then input and change events."""
    js(driver, """const s = document.getElementById(arguments[0]); s.value = arguments[1];
                  s.dispatchEvent(new Event('input', {bubbles: true})); s.dispatchEvent(new Event('change', {bubbles: true}));""",
       slider_id, str(value))


def test_page_is_served(server):
    """Should serve the page at / as UTF-8 HTML, to HEAD too, with a policy that allows nothing from elsewhere; other
    methods get 405."""
    status, headers, body = request(server.port, 'GET', '/')
    assert status == 200
    assert headers['content-type'] == 'text/html; charset=utf-8'
    assert "default-src 'none'" in headers['content-security-policy']
    text = body.decode()
    assert text.startswith('<!doctype html>') and ACM in text
    assert 'http://' not in text and 'https://' not in text  # no CDN, fonts or other origins: it works offline
    status, headers, _ = request(server.port, 'HEAD', '/')
    assert status == 200 and headers['content-type'].startswith('text/html')
    assert request(server.port, 'POST', '/', b'x')[0] == 405


def test_classify_in_the_browser(server, browser):
    """Should classify a bundled image at the slider's budget, show what /classify?heatmap=1 answers (labels, compute
    fraction, heatmap), follow the slider and the auto switch, and classify an uploaded PNG."""
    d = browser
    d.get(f'http://{server.url}/')
    assert d.title == 'acm-serve demo'
    assert d.find_element(By.ID, 'image-model').get_attribute('value') == ACM
    assert d.find_element(By.ID, 'key-panel').get_attribute('hidden') is not None

    # a bundled image at the default budget, 0.5
    sample = d.find_elements(By.CSS_SELECTOR, '#samples button')[0]
    png = base64.b64decode(sample.find_element(By.TAG_NAME, 'img').get_attribute('src').split(',', 1)[1])
    sample.click()
    assert wait_result(d, 'image-result', 1) == 'done'
    half = shown(d)
    check_same(half, classify(server, png, budget=0.5))
    assert half['budget'] == '0.50'
    assert half['heatmap'].shape == (7, 7) and half['heatmap'].std() > 0
    assert sample.get_attribute('aria-pressed') == 'true'
    assert not d.find_element(By.ID, 'legend').get_attribute('hidden')

    # the slider down to 0.25: fewer learners
    set_slider(d, 'budget', 0.25)
    assert wait_result(d, 'image-result', 2) == 'done'
    quarter = shown(d)
    check_same(quarter, classify(server, png, budget=0.25))
    assert d.find_element(By.ID, 'budget-value').text == '0.25'
    assert quarter['fraction'] < half['fraction']
    assert quarter['heatmap'].mean() < half['heatmap'].mean()

    # auto: no budget sent
    d.find_element(By.ID, 'budget-auto').click()
    assert wait_result(d, 'image-result', 3) == 'done'
    auto = shown(d)
    check_same(auto, classify(server, png))
    assert auto['budget'] == 'auto'
    assert d.find_element(By.ID, 'budget').get_attribute('disabled') is not None
    d.find_element(By.ID, 'budget-auto').click()  # back to the slider, at 0.25
    assert wait_result(d, 'image-result', 4) == 'done'

    # an uploaded PNG
    pixels = fashion_test_images(12)[11]
    upload = os.path.join(server.dir, 'upload.png')
    with open(upload, 'wb') as f:
        f.write(png_bytes(pixels))
    d.find_element(By.ID, 'image-file').send_keys(upload)
    assert wait_result(d, 'image-result', 5) == 'done'
    check_same(shown(d), classify(server, png_bytes(pixels), budget=0.25))
    assert all(b.get_attribute('aria-pressed') == 'false' for b in d.find_elements(By.CSS_SELECTOR, '#samples button'))


def test_dense_model_in_the_browser(server, browser):
    """Should classify with a dense model, which has no heatmap, and hide the legend."""
    d = browser
    d.get(f'http://{server.url}/')
    models = [o.get_attribute('value') for o in d.find_elements(By.CSS_SELECTOR, '#image-models option')]
    assert models == [ACM, DENSE]
    js(d, """const m = document.getElementById('image-model'); m.value = arguments[0];
             m.dispatchEvent(new Event('change', {bubbles: true}));""", DENSE)
    sample = d.find_elements(By.CSS_SELECTOR, '#samples button')[2]
    png = base64.b64decode(sample.find_element(By.TAG_NAME, 'img').get_attribute('src').split(',', 1)[1])
    sample.click()
    assert wait_result(d, 'image-result', 1) == 'done'
    check_same(shown(d), classify(server, png, budget=0.5, model=DENSE, heatmap=False))
    assert d.find_element(By.ID, 'legend').get_attribute('hidden') is not None


def test_speech_panel(server, browser):
    """Should transcribe an uploaded WAV at the speech slider's budget as /transcribe does."""
    assert os.path.exists(os.path.join(SPEECH_DIR, 'config.json')), f'{SPEECH_DIR} is missing: run make whisper-model'
    d = browser
    d.get(f'http://{server.url}/')
    assert d.find_element(By.ID, 'speech-model').get_attribute('value') == SPEECH
    assert d.find_element(By.ID, 'transcribe').get_attribute('disabled') is not None
    d.find_element(By.ID, 'audio-file').send_keys(CLIP)
    set_slider(d, 'speech-budget', 0.5)
    assert d.find_element(By.ID, 'speech-budget-value').text == '0.50'
    d.find_element(By.ID, 'transcribe').click()
    assert wait_result(d, 'speech-result', 1) == 'done', d.find_element(By.ID, 'speech-status').text
    with open(CLIP, 'rb') as f:
        status, _, body = request(server.port, 'POST', f'/v2/models/{SPEECH}/transcribe?compute_budget=0.5', f.read(),
                                  timeout=120)
    assert status == 200, body
    direct = json.loads(body)
    assert d.find_element(By.ID, 'transcript').get_attribute('textContent') == direct['text']
    assert 'fox' in direct['text']
    fraction = float(d.find_element(By.ID, 'speech-fraction').get_attribute('data-value'))
    assert abs(fraction - direct['compute_fraction']) < 1e-9 and fraction < 1


def test_page_with_api_keys(browser, tmp_path):
    """Should serve the page without a key but list no models in it; the page's calls fail with 401 until the key is
    typed into its key field, and then work."""
    keys = tmp_path / 'keys.txt'
    keys.write_text(KEY + '\n')
    s = Server(models={ACM: {'path': os.path.join(MODELS, ACM)}}, settings={'auth': {'api_keys_file': str(keys)}})
    try:
        status, _, body = request(s.port, 'GET', '/')
        assert status == 200 and ACM.encode() not in body
        assert request(s.port, 'GET', '/v2')[0] == 401
        d = browser
        d.get(f'http://{s.url}/')
        assert d.find_element(By.ID, 'key-panel').get_attribute('hidden') is None
        assert d.find_elements(By.CSS_SELECTOR, '#image-models option') == []
        d.find_element(By.ID, 'image-model').send_keys(ACM)
        sample = d.find_elements(By.CSS_SELECTOR, '#samples button')[0]
        sample.click()
        assert wait_result(d, 'image-result', 1) == 'error'
        assert d.find_element(By.ID, 'image-status').text.startswith('401')
        d.find_element(By.ID, 'api-key').send_keys(KEY)
        sample.click()
        assert wait_result(d, 'image-result', 2) == 'done'
        assert shown(d)['heatmap'].shape == (7, 7)
    finally:
        s.close()
