"""Edits of a saved model directory, for the tests that check its loader refuses them."""
import json
import os


def edit_config(d, edit):
    """Applies edit(obj) to the config.json of model directory d, in place."""
    path = os.path.join(d, 'config.json')
    with open(path) as f:
        obj = json.load(f)
    edit(obj)
    with open(path, 'w') as f:
        json.dump(obj, f)
