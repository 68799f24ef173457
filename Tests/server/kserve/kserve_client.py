"""KServe's own Python SDK client (kserve 0.21, InferenceRESTClient with protocol v2) against acm-serve.

Run by Tests/server/test_kserve_client.py with .venv-kserve's Python (the SDK pins packages the tools' venv cannot
take). Reads a JSON job on stdin -- the base URL, the image and speech model names, an image batch (.npy) and a WAV
-- and prints, as JSON, what the client returned: health, and each request's outputs and parameters."""
import asyncio
import json
import sys

import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput


def outputs(response):
    out = {}
    for o in response.outputs:
        a = o.as_numpy()
        out[o.name] = a.tolist() if a.dtype != np.object_ else [v.decode() if isinstance(v, bytes) else v
                                                               for v in a.reshape(-1)]
    return out


async def main(job):
    base = job['base']
    client = InferenceRESTClient(RESTConfig(protocol='v2', timeout=120))
    result = {
        'live': await client.is_server_live(base),
        'ready': await client.is_server_ready(base),
        'model_ready': await client.is_model_ready(base, job['image_model']),
        'missing_model_ready': await client.is_model_ready(base, 'no-such-model'),
        'images': [],
    }
    x = np.load(job['images']).astype(np.float32)
    for binary in (False, True):
        for budget in (None, 0.25):
            inp = InferInput('input', list(x.shape), 'FP32')
            inp.set_data_from_numpy(x, binary_data=binary)
            request = InferRequest(model_name=job['image_model'], infer_inputs=[inp],
                                   parameters=None if budget is None else {'compute_budget': budget},
                                   request_outputs=[RequestedOutput('logits', {'binary_data': binary})])
            response = await client.infer(base, request, model_name=job['image_model'])
            result['images'].append({'binary': binary, 'budget': budget, 'outputs': outputs(response),
                                     'parameters': dict(response.parameters or {})})
    with open(job['wav'], 'rb') as f:
        wav = f.read()
    inp = InferInput('audio', [1], 'BYTES')
    inp.set_data_from_numpy(np.array([wav], dtype=np.object_), binary_data=True)
    request = InferRequest(model_name=job['speech_model'], infer_inputs=[inp], parameters={'compute_budget': 0.5},
                           request_outputs=[RequestedOutput('text', {'binary_data': False})])
    response = await client.infer(base, request, model_name=job['speech_model'])
    result['speech'] = {'outputs': outputs(response), 'parameters': dict(response.parameters or {})}
    await client.close()
    return result


if __name__ == '__main__':
    print(json.dumps(asyncio.run(main(json.load(sys.stdin)))))
