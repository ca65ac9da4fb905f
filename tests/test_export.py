"""export_hf.py: exports that carry their tokenizer (characters, a BPE trained here, GPT-2's), a generation
config and a model card, which transformers loads offline (AutoTokenizer, AutoModelForCausalLM, pipeline)
and which generate at temperature 0 the text sample.py generates; the recipe's models in a native
architecture where one computes the same function, else as custom code; --push_to_hub."""

import json
import os

import pytest
import torch

from conftest import multilingual_text, run_script, text_dataset, tiny
from model import GPT
from nanogpt.data import EOT, GPT2_EOT_TOKEN, PADDED_GPT2_VOCAB_SIZE, train_bpe, write_dataset
from nanogpt.export import custom_form, gpt2_form, gpt2_tokenizer_files, neox_form
from test_gpt2 import all_logits, run_in_process, trained_checkpoint

transformers = pytest.importorskip('transformers')
PROMPTS = {'char': 'привет мир', 'bpe': 'привет 世界 🙂 café', 'gpt2': 'Hello, привет 世界 🙂'}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    transformers.logging.set_verbosity_error()


def exported(monkeypatch, capsys, out, *args):
    """Runs export_hf.py on out's checkpoint in this process; returns what it printed."""
    e = run_in_process(monkeypatch, 'export_hf.py', f'--out_dir={out}', *args)
    assert e is None, e
    return capsys.readouterr().out


def sampled(monkeypatch, capsys, out, prompt, n):
    """sample.py's greedy text of n tokens after prompt."""
    assert run_in_process(monkeypatch, 'sample.py', f'--out_dir={out}', '--device=cpu', '--num_samples=1',
                          f'--max_new_tokens={n}', '--temperature=0', f'--start={prompt}') is None
    return ''.join(l for l in capsys.readouterr().out.splitlines(True) if not l.startswith('Overriding')).split(
        '\n---------------\n')[0]


def same_generation(ours, theirs):
    """Greedy text from transformers' pipeline and from sample.py: the same, but transformers stops at
    <|endoftext|> (generation_config's eos_token_id) and leaves it out, where sample.py prints it and goes on."""
    assert ours.startswith(theirs) and (ours == theirs or ours[len(theirs):].startswith(EOT)), (ours, theirs)


def gpt2_dataset(folder, text, gpt2_bpe):
    from test_prepare import gpt2_from_file
    enc = gpt2_from_file(gpt2_bpe)
    split = int(len(text) * 0.9)
    return write_dataset(folder, enc.encode_ordinary(text[:split]), enc.encode_ordinary(text[split:]),
                         {'vocab_size': PADDED_GPT2_VOCAB_SIZE, 'tokenizer': 'gpt2'}), enc


@pytest.mark.parametrize('kind', ['char', 'bpe', 'gpt2'])
def test_an_export_carries_its_tokenizer_and_generates_as_sample_py(kind, tmp_path, monkeypatch, capsys, request):
    text = multilingual_text(3000)
    data, out, export_dir = tmp_path / 'data', tmp_path / 'out', tmp_path / 'out' / 'hf'
    if kind == 'gpt2':
        gpt2_bpe = request.getfixturevalue('gpt2_bpe')  # skips where GPT-2's BPE file is not here
        monkeypatch.setenv('NANOGPT_GPT2_BPE', str(gpt2_bpe))
        meta, enc = gpt2_dataset(data, text, gpt2_bpe)
    else:
        meta = text_dataset(data, text, kind, vocab_size=300)
    model = trained_checkpoint(out / 'ckpt.pt', True, meta['vocab_size'], False, dataset=data)
    n_tokens = 50257 if kind == 'gpt2' else meta['vocab_size']
    if kind == 'gpt2':  # padding rows that outscore every token: sample.py must still never draw them
        ckpt = torch.load(out / 'ckpt.pt', map_location='cpu', weights_only=True)
        ckpt['model']['lm_head.weight'][n_tokens:] = 10 * ckpt['model']['lm_head.weight'][:50304 - n_tokens]
        torch.save(ckpt, out / 'ckpt.pt')
    printed = exported(monkeypatch, capsys, out)
    assert "architecture: GPT2LMHeadModel: GPT-2's architecture" in printed
    tokenizer_files = ['vocab.json', 'merges.txt'] if kind == 'gpt2' else []
    assert sorted(p.name for p in export_dir.iterdir()) == sorted([
        'README.md', 'config.json', 'generation_config.json', 'model.safetensors', 'tokenizer.json',
        'tokenizer_config.json', *tokenizer_files])
    config = json.loads((export_dir / 'config.json').read_text())
    generation = json.loads((export_dir / 'generation_config.json').read_text())
    eot = {'char': None, 'bpe': 0, 'gpt2': GPT2_EOT_TOKEN}[kind]
    assert config['vocab_size'] == n_tokens and config['eos_token_id'] == eot and generation.get('eos_token_id') == eot
    assert generation['max_length'] == 32 and generation['temperature'] == 0.8 and generation['top_k'] == 200

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(export_dir))
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(str(export_dir)).eval()
    assert type(hf_model).__name__ == 'GPT2LMHeadModel' and len(tokenizer) == n_tokens
    sample = text[:2000] + ' the , fox . quick ! '  # no clean-up of the spaces before punctuation
    sample += '' if kind == 'char' else ' العربية 👨\u200d👩\u200d👧' + EOT
    ids = tokenizer(sample).input_ids
    if kind == 'char':
        assert ids == [meta['stoi'][c] for c in sample]
    elif kind == 'gpt2':
        assert ids == enc.encode(sample, allowed_special={EOT})  # tiktoken's ids
    else:
        from nanogpt.data import load_tokenizer
        assert ids == load_tokenizer(meta, 'the test', str(data))[0](sample)
    assert tokenizer.decode(ids) == sample

    idx = torch.randint(n_tokens, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf_model(idx).logits, all_logits(model, idx)[..., :n_tokens], atol=1e-4, rtol=0)
    generate = transformers.pipeline('text-generation', model=str(export_dir))
    theirs = generate(PROMPTS[kind], max_new_tokens=12, do_sample=False)[0]['generated_text']
    same_generation(sampled(monkeypatch, capsys, out, PROMPTS[kind], 12), theirs)
    assert len(theirs) > len(PROMPTS[kind])


def test_the_recipe_models_export_native_where_transformers_computes_them(tmp_path, monkeypatch, capsys):
    """Each of the recipe's model keys exports: in GPT-2's form (ReLU squared, an untied head), GPT-NeoX's
    (rotary embeddings), or custom code (QK-norm, logit soft-capping); float32 logits agree within 1e-4
    on random inputs, and export_hf.py says which in one line."""
    meta = text_dataset(tmp_path / 'data', multilingual_text(1000), 'char')
    cases = [
        (dict(mlp_activation='relu2', tie_weights=False), 'GPT2LMHeadModel', "GPT-2's architecture"),
        (dict(rope=True, mlp_activation='relu2', tie_weights=False), 'GPTNeoXForCausalLM',
         "GPT-NeoX's blocks run in sequence compute rotary embeddings as ours do"),
        (dict(rope=True, tie_weights=True), 'GPTNeoXForCausalLM', "GPT-NeoX's blocks"),
        (dict(rope=True, qk_norm=True, mlp_activation='relu2', tie_weights=False, logit_softcap=5.0), 'custom',
         "no transformers architecture has qk_norm or logit_softcap beside LayerNorm blocks and an ungated MLP"),
        (dict(logit_softcap=5.0), 'custom', "no transformers architecture has logit_softcap"),
    ]
    for i, (recipe, architecture, why) in enumerate(cases):
        out = tmp_path / f'out{i}'
        model = trained_checkpoint(out / 'ckpt.pt', i % 2 == 0, meta['vocab_size'], False, dataset=tmp_path / 'data',
                                   **recipe)
        printed = exported(monkeypatch, capsys, out).splitlines()
        named = 'custom code (trust_remote_code=True)' if architecture == 'custom' else architecture
        assert printed[1].startswith(f"architecture: {named}: {why}"), printed
        hf_model = transformers.AutoModelForCausalLM.from_pretrained(str(out / 'hf'),
                                                                     trust_remote_code=architecture == 'custom').eval()
        assert type(hf_model).__name__ == {'custom': 'NanoGPTForCausalLM'}.get(architecture, architecture)
        idx = torch.randint(meta['vocab_size'], (2, 32), generator=torch.Generator().manual_seed(i))
        with torch.no_grad():
            expected = all_logits(model, idx)
            assert expected.std() > 1.0
            torch.testing.assert_close(hf_model(idx).logits, expected, atol=1e-4, rtol=0)
    # GPT-2's form with ReLU squared or an untied head is not GPT-2's architecture: init_from=DIR refuses it
    with pytest.raises(ValueError, match=r"is a GPT-2 with ReLU squared and an untied head, not GPT-2's architecture"):
        GPT.from_pretrained(str(tmp_path / 'out0' / 'hf'))
    # a padded vocabulary's extra rows are cut, in every form
    model = tiny(vocab_size=70, rope=True, tie_weights=False)
    for form in (gpt2_form, neox_form, custom_form):
        tensors, config = form(model, 64)
        assert config['vocab_size'] == 64 and all(t.shape[0] == 64 for name, t in tensors.items()
                                                  if name.endswith(('wte.weight', 'embed_in.weight', 'lm_head.weight',
                                                                    'embed_out.weight')))


def test_the_speedrun_recipe_model_exports_loads_and_generates(project, tmp_path, monkeypatch, capsys):
    """config/speedrun_shakespeare_char_cpu.py's model (rope, QK-norm, ReLU squared, an untied head), tiny:
    exported as custom code, loaded with trust_remote_code=True, generates what sample.py generates (past
    block_size too); its model card says what it was trained on and how."""
    out = tmp_path / 'out'
    shape = ['--n_layer=2', '--n_head=2', '--n_embd=32', '--block_size=32', '--batch_size=4', '--eval_iters=2']
    data = project / 'data' / 'shakespeare_char'  # named by its path: the export runs in this process, from the repo
    args = ['config/speedrun_shakespeare_char_cpu.py', *shape, '--max_iters=6', '--eval_interval=6',
            '--warmup_iters=2', '--lr_decay_iters=6', '--cooldown_iters=3', f'--dataset={data}', f'--out_dir={out}']
    run_script(project, 'train.py', *args)
    printed = exported(monkeypatch, capsys, out, f'--export_dir={tmp_path}/hf')
    assert 'architecture: custom code (trust_remote_code=True): no transformers architecture has qk_norm' in printed
    folder = tmp_path / 'hf'
    assert {'modeling_nanogpt.py', 'nanogpt_model.py'} <= {p.name for p in folder.iterdir()}
    assert json.loads((folder / 'generation_config.json').read_text())['use_cache'] is False
    card = (folder / 'README.md').read_text()
    assert f"python train.py {' '.join(args)}" in card  # the command that trained it
    assert f"- Data: {data}, in characters (65 of them)." in card
    assert "- Tokens trained on: 768 (6 iterations of 128 tokens)." in card
    val_loss = torch.load(out / 'ckpt.pt', map_location='cpu', weights_only=True)['best_val_loss']
    assert f"- Validation: loss {val_loss:.4f} (train.py's best estimate, over eval_iters=2 batches), " \
           f"{val_loss / 0.6931471805599453:.4f} bits per byte" in card  # tiny Shakespeare: a byte per character
    assert "trust_remote_code=True" in card and "from_pretrained(" in card

    generate = transformers.pipeline('text-generation', model=str(folder), trust_remote_code=True)
    theirs = generate('ROMEO:', max_new_tokens=40, do_sample=False)[0]['generated_text']  # 46 characters > 32
    assert theirs == sampled(monkeypatch, capsys, out, 'ROMEO:', 40)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    assert tokenizer.decode(tokenizer('First Citizen:\nBefore we proceed').input_ids) == 'First Citizen:\nBefore we proceed'


def test_push_to_hub(tmp_path, monkeypatch, capsys):
    """--push_to_hub uploads the export with its card through huggingface_hub (its upload replaced here:
    no network); a failed upload is one line and leaves the export on disk."""
    import huggingface_hub
    meta = text_dataset(tmp_path / 'data', multilingual_text(1000), 'char')
    out = tmp_path / 'out'
    trained_checkpoint(out / 'ckpt.pt', False, meta['vocab_size'], False, dataset=tmp_path / 'data')
    calls = []
    monkeypatch.setattr(huggingface_hub.HfApi, 'create_repo', lambda self, repo_id, **kw: calls.append(('create', repo_id)))
    monkeypatch.setattr(huggingface_hub.HfApi, 'upload_folder',
                        lambda self, **kw: calls.append(('upload', kw['repo_id'], sorted(os.listdir(kw['folder_path'])))))
    monkeypatch.setenv('HF_TOKEN', 'hf_test_token')
    printed = exported(monkeypatch, capsys, out, '--push_to_hub=someone/tiny-model')
    files = sorted(os.listdir(out / 'hf'))
    assert calls == [('create', 'someone/tiny-model'), ('upload', 'someone/tiny-model', files)] and 'README.md' in files
    assert 'uploaded to https://huggingface.co/someone/tiny-model' in printed
    assert "AutoModelForCausalLM.from_pretrained('someone/tiny-model')" in (out / 'hf' / 'README.md').read_text()

    def offline_upload(self, **kw):
        raise ConnectionError('no network here')
    monkeypatch.setattr(huggingface_hub.HfApi, 'upload_folder', offline_upload)
    e = run_in_process(monkeypatch, 'export_hf.py', f'--out_dir={out}', f'--export_dir={tmp_path}/hf2',
                       '--push_to_hub=someone/tiny-model')
    assert e.code == (f"error: could not upload {tmp_path}/hf2 to the hub as someone/tiny-model (ConnectionError: no "
                      f"network here); the export is on disk: run the upload again with hf upload someone/tiny-model "
                      f"{tmp_path}/hf2")
    assert sorted(os.listdir(tmp_path / 'hf2')) == files


def test_gpt2_tokenizer_files_from_tiktoken_ranks():
    """GPT-2's vocab.json, merges.txt and tokenizer.json are built from tiktoken's ranks; here from ranks
    made of a small BPE trained in the test (GPT-2's own file is not needed), checked against tiktoken."""
    import tiktoken
    from tiktoken_ext.openai_public import r50k_pat_str
    from tokenizers import Tokenizer
    from nanogpt.data import bpe_token_bytes
    runs = ' '.join(c * n for c in 'ab=' for n in range(1, 30))  # runs of a character: where the merges' order tells
    bpe = train_bpe([multilingual_text(3000), runs * 20], 380)
    assert bpe.get_vocab_size() == 380
    token_bytes_of = bpe_token_bytes(bpe, 'the test')[1:]  # without <|endoftext|> (id 0): ranks 0, 1, ... in merge order
    enc = tiktoken.Encoding(name='small', pat_str=r50k_pat_str, mergeable_ranks={t: i for i, t in enumerate(token_bytes_of)},
                            special_tokens={EOT: len(token_bytes_of)})
    files = gpt2_tokenizer_files(token_bytes_of)
    tokenizer = Tokenizer.from_str(files['tokenizer.json'].decode('utf-8'))
    text = multilingual_text(500, seed=9) + ' العربية 👨\u200d👩\u200d👧 ' + runs + EOT
    assert tokenizer.encode(text).ids == enc.encode(text, allowed_special={EOT})
    vocab = json.loads(files['vocab.json'])
    merges = files['merges.txt'].decode('utf-8').splitlines()
    assert len(vocab) == 380 and vocab[EOT] == 379 and merges[0] == '#version: 0.2' and len(merges) == 1 + 380 - 1 - 256
