"""GPT-2 in Hugging Face's layout, offline: GPT.from_pretrained on a tiny random GPT-2 written by the
test, checked against a plain functional forward and against transformers; fine-tuning and sampling
from such a directory; export_hf.py and back; the GPT-2 config files."""

import json
import math
import runpy
import sys

import pytest
import torch
from torch.nn import functional as F

from conftest import REPO, TINY, multilingual_text, run_script, text_dataset
from model import GPT, GPTConfig
from nanogpt.checkpoint import save_checkpoint
from nanogpt.data import write_dataset

safetensors_torch = pytest.importorskip('safetensors.torch')

SIZE = dict(n_layer=2, n_head=2, n_embd=16, n_positions=64)
GPT2_VOCAB = 50257  # GPT-2's tokenizer, so that sample.py can run on the model


def random_gpt2(n_layer, n_head, n_embd, n_positions, vocab_size, seed=0):
    """Random GPT-2 tensors under Hugging Face's names without prefix, Conv1D weights as (in, out).
    Not GPT-2's init: larger values, and LayerNorms away from 1 and 0, so that every tensor shows.
    (n_head shapes no tensor; it is taken so that SIZE can be passed whole.)"""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, mean=0.0):
        return mean + 0.3 * torch.randn(*shape, generator=g)
    C = n_embd
    t = {'wte.weight': rand(vocab_size, C), 'wpe.weight': rand(n_positions, C),
         'ln_f.weight': rand(C, mean=1.0), 'ln_f.bias': rand(C)}
    for i in range(n_layer):
        t.update({
            f'h.{i}.ln_1.weight': rand(C, mean=1.0), f'h.{i}.ln_1.bias': rand(C),
            f'h.{i}.attn.c_attn.weight': rand(C, 3 * C), f'h.{i}.attn.c_attn.bias': rand(3 * C),
            f'h.{i}.attn.c_proj.weight': rand(C, C), f'h.{i}.attn.c_proj.bias': rand(C),
            f'h.{i}.ln_2.weight': rand(C, mean=1.0), f'h.{i}.ln_2.bias': rand(C),
            f'h.{i}.mlp.c_fc.weight': rand(C, 4 * C), f'h.{i}.mlp.c_fc.bias': rand(4 * C),
            f'h.{i}.mlp.c_proj.weight': rand(4 * C, C), f'h.{i}.mlp.c_proj.bias': rand(C),
        })
    return t


def write_hf_dir(folder, tensors, n_layer, n_head, n_embd, n_positions, vocab_size, prefix='transformer.'):
    """config.json and model.safetensors as a Hugging Face GPT-2 directory. The files on the hub,
    written by older transformers versions, also hold the causal-mask buffers h.N.attn.bias and
    h.N.attn.masked_bias, which a loader must skip: so do these."""
    folder.mkdir(parents=True, exist_ok=True)
    stored = {prefix + k: v for k, v in tensors.items()}
    for i in range(n_layer):
        mask = torch.ones(n_positions, n_positions).tril().view(1, 1, n_positions, n_positions)
        stored[f'{prefix}h.{i}.attn.bias'] = mask
        stored[f'{prefix}h.{i}.attn.masked_bias'] = torch.tensor(-1e4)
    safetensors_torch.save_file(stored, str(folder / 'model.safetensors'))
    config = dict(model_type='gpt2', n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=n_positions,
                  vocab_size=vocab_size, activation_function='gelu', layer_norm_epsilon=1e-5)
    (folder / 'config.json').write_text(json.dumps(config))
    return folder


def reference_logits(t, n_head, idx):
    """GPT-2's forward written out with torch.nn.functional on the raw tensors: token and position
    embeddings, pre-LayerNorm blocks of causal self-attention and an exact-GELU MLP, a final
    LayerNorm and the head tied to the token embeddings. Conv1D computes x @ W + b."""
    B, T = idx.shape
    C = t['wte.weight'].shape[1]
    hs = C // n_head
    n_layer = len({k.split('.')[1] for k in t if k.startswith('h.')})

    def ln(x, name):
        return F.layer_norm(x, (C,), t[name + '.weight'], t[name + '.bias'], eps=1e-5)

    def conv1d(x, name):
        return x @ t[name + '.weight'] + t[name + '.bias']

    future = torch.ones(T, T).triu(diagonal=1).bool()
    x = t['wte.weight'][idx] + t['wpe.weight'][:T]
    for i in range(n_layer):
        h = ln(x, f'h.{i}.ln_1')
        q, k, v = conv1d(h, f'h.{i}.attn.c_attn').split(C, dim=-1)
        q, k, v = (z.view(B, T, n_head, hs).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hs)
        att = att.masked_fill(future, float('-inf')).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + conv1d(y, f'h.{i}.attn.c_proj')
        h = ln(x, f'h.{i}.ln_2')
        x = x + conv1d(F.gelu(conv1d(h, f'h.{i}.mlp.c_fc')), f'h.{i}.mlp.c_proj')
    return ln(x, 'ln_f') @ t['wte.weight'].t()


def all_logits(model, idx):
    """Logits at every position (with targets, forward computes them all)."""
    with torch.no_grad():
        logits, _ = model(idx, idx)
    return logits


def transformers_logits(folder, idx):
    """Logits of transformers' GPT2LMHeadModel loaded from folder; also asserts that it loaded every
    weight, with none missing, unexpected or of the wrong shape."""
    transformers = pytest.importorskip('transformers')
    hf_model, info = transformers.GPT2LMHeadModel.from_pretrained(str(folder), output_loading_info=True)
    assert not info['missing_keys'] and not info['mismatched_keys'] and not info['error_msgs'], info
    hf_model.eval()
    with torch.no_grad():
        return hf_model(idx).logits, info


@pytest.fixture(scope='module')
def tiny_hf(tmp_path_factory):
    """A tiny random GPT-2 with GPT-2's vocabulary, in Hugging Face's layout: (folder, raw tensors)."""
    tensors = random_gpt2(**SIZE, vocab_size=GPT2_VOCAB)
    folder = write_hf_dir(tmp_path_factory.mktemp('hf') / 'tiny-gpt2', tensors, **SIZE, vocab_size=GPT2_VOCAB)
    return folder, tensors


@pytest.mark.parametrize('prefix', ['transformer.', ''])
def test_from_pretrained_matches_reference_and_transformers(tmp_path, prefix):
    vocab_size = 100
    tensors = random_gpt2(**SIZE, vocab_size=vocab_size, seed=1)
    folder = write_hf_dir(tmp_path / 'gpt2', tensors, **SIZE, vocab_size=vocab_size, prefix=prefix)
    model = GPT.from_pretrained(str(folder))
    assert model.config.vocab_size == vocab_size and model.config.block_size == SIZE['n_positions']
    assert model.config.bias and model.config.dropout == 0.0
    model.eval()
    idx = torch.randint(vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    ours = all_logits(model, idx)
    expected = reference_logits(tensors, SIZE['n_head'], idx)
    assert ours.shape == (2, 40, vocab_size)
    assert ours.std() > 1.0  # large enough logits that a wrong transpose or a missing bias would show
    torch.testing.assert_close(ours, expected, atol=2e-5, rtol=1e-5)  # float32, summed in other orders
    theirs, _ = transformers_logits(folder, idx)
    torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-5)


def test_from_pretrained_errors(tmp_path):
    tensors = random_gpt2(**SIZE, vocab_size=100)

    def load(folder):
        with pytest.raises(ValueError) as e:  # not SystemExit: people call from_pretrained from notebooks
            GPT.from_pretrained(str(folder))
        message = str(e.value)
        assert message and '\n' not in message
        return message

    # a tensor of the wrong shape is named, with both shapes
    bad = dict(tensors, **{'h.1.mlp.c_fc.weight': torch.zeros(16, 32)})
    message = load(write_hf_dir(tmp_path / 'shape', bad, **SIZE, vocab_size=100))
    assert 'h.1.mlp.c_fc.weight' in message and '(32, 16)' in message and '(64, 16)' in message
    # a Conv1D weight that is not 2-D
    bad = dict(tensors, **{'h.0.attn.c_attn.weight': torch.zeros(1, 16, 48)})
    assert 'h.0.attn.c_attn.weight' in load(write_hf_dir(tmp_path / 'dims', bad, **SIZE, vocab_size=100))
    # a config.json that disagrees with the tensors
    message = load(write_hf_dir(tmp_path / 'positions', tensors, **dict(SIZE, n_positions=32), vocab_size=100))
    assert 'wpe.weight' in message
    # a missing tensor
    missing = {k: v for k, v in tensors.items() if k != 'h.1.ln_2.bias'}
    assert 'h.1.ln_2.bias' in load(write_hf_dir(tmp_path / 'missing', missing, **SIZE, vocab_size=100))
    # a tensor the model has no place for
    extra = dict(tensors, **{'h.2.ln_1.weight': torch.ones(16)})
    assert 'h.2.ln_1.weight' in load(write_hf_dir(tmp_path / 'extra', extra, **SIZE, vocab_size=100))

    # missing files, and broken ones
    folder = write_hf_dir(tmp_path / 'files', tensors, **SIZE, vocab_size=100)
    (folder / 'model.safetensors').rename(folder / 'elsewhere.safetensors')
    assert 'model.safetensors is missing' in load(folder)
    (folder / 'config.json').unlink()
    assert 'config.json is missing' in load(folder)
    (folder / 'elsewhere.safetensors').rename(folder / 'model.safetensors')
    (folder / 'config.json').write_text(json.dumps({'n_layer': 2, 'n_embd': 16, 'n_positions': 64, 'vocab_size': 100}))
    assert 'n_head' in load(folder)
    (folder / 'config.json').write_text(json.dumps(dict(SIZE, n_head=3, vocab_size=100)))
    assert 'not divisible by n_head=3' in load(folder)
    (folder / 'config.json').write_text('{"n_layer": 2,')
    assert 'config.json' in load(folder)
    (folder / 'model.safetensors').write_bytes(b'not a safetensors file')
    (folder / 'config.json').write_text(json.dumps(dict(SIZE, vocab_size=100, n_layer=2)))
    assert 'model.safetensors' in load(folder)
    assert 'neither a directory' in load(tmp_path / 'no-such-dir')


def test_only_dropout_can_be_overridden(tiny_hf):
    folder, _ = tiny_hf
    with pytest.raises(ValueError, match='only override dropout, not n_layer'):
        GPT.from_pretrained(str(folder), dict(dropout=0.1, n_layer=4))
    model = GPT.from_pretrained(str(folder), dict(dropout=0.1))
    assert model.config.dropout == 0.1 and model.transformer.drop.p == 0.1


def test_crop_block_size_after_loading(tiny_hf):
    folder, tensors = tiny_hf
    model = GPT.from_pretrained(str(folder))
    model.crop_block_size(16)
    model.eval()
    assert model.config.block_size == 16 and model.transformer.wpe.weight.shape == (16, SIZE['n_embd'])
    idx = torch.randint(GPT2_VOCAB, (1, 16), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(all_logits(model, idx), reference_logits(tensors, SIZE['n_head'], idx),
                               atol=2e-5, rtol=1e-5)
    with pytest.raises(AssertionError):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_finetune_and_sample_from_a_hf_directory(project, tmp_path, tiny_hf, gpt2_bpe):
    folder, _ = tiny_hf
    out = tmp_path / 'out'
    # GPT-2 reads GPT-2's tokens (train.py refuses a character dataset for it): ids of GPT-2's vocabulary
    write_dataset(tmp_path / 'bpe', list(range(1000, 1200)) * 3, list(range(3000, 3100)) * 2,
                  {'vocab_size': 50304, 'tokenizer': 'gpt2'})
    shape_args = ('--n_layer=', '--n_head=', '--n_embd=', '--block_size=')
    args = [a for a in TINY if not a.startswith(shape_args)]
    proc = run_script(project, 'train.py', *args, f'--init_from={folder}', '--block_size=32',
                      f'--dataset={tmp_path}/bpe', f'--out_dir={out}', '--max_iters=3', '--eval_interval=3',
                      '--gradient_accumulation_steps=1')
    assert f'loading GPT-2 weights from {folder}' in proc.stdout
    assert [l.split(':')[0] for l in proc.stdout.splitlines() if l.startswith('iter ')] == ['iter 0', 'iter 1', 'iter 2']
    ckpt = torch.load(out / 'ckpt.pt', map_location='cpu', weights_only=True)
    assert ckpt['model_args'] == dict(n_layer=2, n_head=2, n_embd=16, block_size=32, bias=True, vocab_size=GPT2_VOCAB,
                                      dropout=0.0, rope=False, qk_norm=False, mlp_activation='gelu', tie_weights=True,
                                      logit_softcap=0.0, zero_init_proj=False)  # GPT-2's architecture, keys and all
    assert ckpt['model']['transformer.wpe.weight'].shape == (32, 16)  # cropped from 64

    proc = run_script(project, 'sample.py', f'--init_from={folder}', '--num_samples=1', '--max_new_tokens=8',
                      '--device=cpu', '--start=Hello')
    text = ''.join(l for l in proc.stdout.splitlines(True) if not l.startswith(('Overriding', 'loading GPT-2')))
    assert text.startswith('Hello') and text.endswith('\n---------------\n')  # the prompt, the sample, the separator
    assert 'generated 8 tokens in' in proc.stderr


def trained_checkpoint(path, bias, vocab_size, compiled_names, dataset='shakespeare_char', **recipe):
    """A checkpoint as train.py writes it, of a tiny model whose weights (biases and LayerNorms
    included) are random, so that every tensor matters to the logits; trained on dataset, and with
    the recipe's model keys given."""
    model_args = dict(n_layer=2, n_head=2, n_embd=16, block_size=32, bias=bias, vocab_size=vocab_size, dropout=0.0,
                      **recipe)
    torch.manual_seed(0)
    model = GPT(GPTConfig(**model_args))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    state = model.state_dict()
    if compiled_names:  # as torch.compile names them; export_hf.py must strip the prefix
        state = {'_orig_mod.' + k: v for k, v in state.items()}
    save_checkpoint(str(path), {'model': state, 'optimizer': {}, 'model_args': model_args, 'iter_num': 10,
                                'best_val_loss': 3.0, 'config': {'dataset': str(dataset)}})
    return model.eval()


def run_in_process(monkeypatch, script, *args):
    """Runs a top-level script of the project in this process, as `python script args` would (a new
    interpreter would spend seconds importing torch again); returns the SystemExit it raised, or None."""
    monkeypatch.setattr(sys, 'argv', [script, *map(str, args)])
    try:
        runpy.run_path(str(REPO / script), run_name='__main__')
    except SystemExit as e:
        return e
    return None


@pytest.mark.parametrize('bias, tokenizer', [(False, 'char'), (True, 'bpe')])
def test_export_then_reload_gives_the_same_logits(tmp_path, monkeypatch, capsys, bias, tokenizer):
    out = tmp_path / 'out'
    meta = text_dataset(tmp_path / 'data', multilingual_text(3000), tokenizer, vocab_size=300)
    model = trained_checkpoint(out / 'ckpt.pt', bias, meta['vocab_size'], compiled_names=not bias,
                               dataset=tmp_path / 'data')
    # the default export_dir is out_dir/hf
    export_dir = tmp_path / 'exported' if bias else out / 'hf'
    extra = [f'--export_dir={export_dir}'] if bias else []
    assert run_in_process(monkeypatch, 'export_hf.py', f'--out_dir={out}', *extra) is None
    printed = capsys.readouterr().out
    assert "architecture: GPT2LMHeadModel: GPT-2's architecture\n" in printed and f'wrote {export_dir}: ' in printed
    assert sorted(p.name for p in export_dir.iterdir()) == ['README.md', 'config.json', 'generation_config.json',
                                                          'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']

    config = json.loads((export_dir / 'config.json').read_text())
    assert config['activation_function'] == 'gelu' and config['tie_word_embeddings'] is True
    assert (config['vocab_size'], config['n_positions'], config['n_embd']) == (meta['vocab_size'], 32, 16)
    tensors = safetensors_torch.load_file(str(export_dir / 'model.safetensors'))
    assert 'lm_head.weight' not in tensors  # tied to wte, as transformers writes it
    assert tensors['transformer.h.0.mlp.c_fc.weight'].shape == (16, 64)  # Conv1D (in, out)
    if not bias:
        assert not tensors['transformer.h.1.attn.c_attn.bias'].any() and not tensors['transformer.ln_f.bias'].any()

    idx = torch.randint(meta['vocab_size'], (2, 32), generator=torch.Generator().manual_seed(0))
    expected = all_logits(model, idx)
    assert expected.std() > 1.0
    reloaded = GPT.from_pretrained(str(export_dir)).eval()
    torch.testing.assert_close(all_logits(reloaded, idx), expected, atol=1e-6, rtol=1e-6)
    theirs, info = transformers_logits(export_dir, idx)
    assert not info['unexpected_keys']
    torch.testing.assert_close(theirs, expected, atol=1e-5, rtol=1e-5)


def test_export_errors(tmp_path, monkeypatch):
    e = run_in_process(monkeypatch, 'export_hf.py', f'--out_dir={tmp_path / "nothing"}')
    assert e.code == f"error: no checkpoint at {tmp_path / 'nothing' / 'ckpt.pt'}; train one first, " \
                     f"or point --out_dir at the folder that holds one"  # export_hf.py has no init_from
    assert not (tmp_path / 'nothing').exists()  # nothing written
    e = run_in_process(monkeypatch, 'export_hf.py', '--out_dri=out')
    assert e.code.startswith("error: unknown config key 'out_dri' on the command line; did you mean out_dir")

    # a checkpoint whose weights do not fit its model_args
    out = tmp_path / 'out'
    trained_checkpoint(out / 'ckpt.pt', False, 65, compiled_names=False)
    checkpoint = torch.load(out / 'ckpt.pt', weights_only=True)
    checkpoint['model_args']['n_embd'] = 32
    save_checkpoint(str(out / 'ckpt.pt'), checkpoint)
    e = run_in_process(monkeypatch, 'export_hf.py', f'--out_dir={out}')
    assert e.code.startswith(f"error: {out / 'ckpt.pt'} does not match its own model_args: ") and '\n' not in e.code
    assert not (out / 'hf').exists()


def test_config_files_are_accepted(tmp_path, monkeypatch):
    # every config file, each applied alone, its keys checked; batch_size=0 then stops train.py at its
    # first check, before it touches the device or the data
    configs = sorted((REPO / 'config').glob('*.py'))
    assert len(configs) >= 10
    for config in configs:
        e = run_in_process(monkeypatch, 'train.py', config, '--batch_size=0')
        assert e.code == 'error: batch_size must be a positive integer, got 0', (config, e.code)
    # ... and the same check catches a typo in a config file
    typo = tmp_path / 'typo.py'
    typo.write_text("init_from = 'gpt2'\nbatch_sise = 8\n")
    e = run_in_process(monkeypatch, 'train.py', typo, '--batch_size=0')
    assert e.code.startswith(f"error: unknown config key 'batch_sise' in {typo}; did you mean batch_size")
