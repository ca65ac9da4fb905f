"""A byte-level BPE trained on the user's text (data/prepare.py --tokenizer=bpe) and everything that reads a
dataset's tokenizer: the round trip of any UTF-8 text, the training part only, train/sample/evaluate/bench
on it, bits per byte against a hand computation, the tokenizer fingerprint that checkpoints record, and
the bad inputs, on multilingual text (Latin, Cyrillic, Greek, CJK, emoji) written here."""

import codecs
import math
import pickle
import random
import re
import shutil

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from conftest import (TINY, copy_project, multilingual_text, run_cases, run_script, script_env, text_dataset)
from nanogpt.data import (EOT, byte_alphabet, load_meta, load_tokenizer, token_bytes, tokenizer_fingerprint,
                          train_bpe)
from test_gpt2 import run_in_process, trained_checkpoint

TRAIN_ARGS = [*TINY, '--gradient_accumulation_steps=1']
SAMPLE = ['sample.py', '--device=cpu', '--num_samples=1', '--max_new_tokens=5']


def one_error_line(result, name=''):
    assert result['rc'] not in (0, None), f"{name}: exit code {result['rc']}\n{result['stdout'][-1000:]}"
    assert 'Traceback' not in result['stderr'], f"{name}: {result['stderr'][-3000:]}"
    lines = result['stderr'].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), f"{name}: {result['stderr'][-3000:]}"
    return lines[0]


def snapshot(*folders):
    return {p: p.read_bytes() if p.is_file() else None
            for folder in folders for p in folder.rglob('*') if '__pycache__' not in p.parts}


# ----------------------------------------------------------------------------- the tokenizer itself

def test_byte_level_bpe_round_trips_any_text(tmp_path):
    text_dataset(tmp_path / 'bpe', multilingual_text(3000), 'bpe', vocab_size=300)
    meta = load_meta(str(tmp_path / 'bpe'))
    files = meta.pop('files')
    assert meta == {'vocab_size': 300, 'tokenizer': 'bpe', 'tokenizer_file': 'tokenizer.json', 'dtype': 'uint16'}
    assert files.keys() == {'train.bin', 'val.bin'}  # the token files, not the tokenizer's
    encode, decode_bytes = load_tokenizer(meta, 'the test', str(tmp_path / 'bpe'))
    rng = random.Random(0)
    unseen = ''.join(chr(rng.choice([rng.randrange(0x20, 0xD800), rng.randrange(0xE000, 0x110000)])) for _ in range(2000))
    texts = [multilingual_text(200, seed=1), 'العربية हिन्दी ไทย', '\x00\x01\x7f\t\r\n  \u200b', EOT + ' written out',
             '👨\u200d👩\u200d👧 \U0010ffff', ''.join(map(chr, range(1, 0x800))), unseen]
    for text in texts:
        ids = encode(text)
        assert max(ids) < 300 and decode_bytes(ids) == text.encode('utf-8')
    assert encode(EOT) == [0]  # the special token, id 0
    # one token at a time, as sample.py streams them: tokens that hold part of a character decode once whole
    ids = encode(texts[4] + texts[1])
    pieces = [decode_bytes([i]) for i in ids]
    assert any(p.decode('utf-8', 'replace') != p.decode('utf-8', 'ignore') for p in pieces)
    decoder = codecs.getincrementaldecoder('utf-8')(errors='replace')
    assert ''.join(decoder.decode(p) for p in pieces) + decoder.decode(b'', final=True) == texts[4] + texts[1]
    # byte_alphabet is the tokenizers library's ByteLevel alphabet, byte for byte
    tokenizer = train_bpe(['a'], 257)
    assert [tokenizer.id_to_token(tokenizer.encode(bytes([b]).decode('latin-1')).ids[0]) for b in range(0x20, 0x7f)] \
        == byte_alphabet()[0x20:0x7f]
    assert sorted(byte_alphabet()) == sorted(__import__('tokenizers').pre_tokenizers.ByteLevel.alphabet())


def test_padding_ids_are_never_drawn():
    """sample.py draws only the ids its tokenizer has (n_tokens): a padded vocabulary's extra rows (GPT-2's 50257
    to 50303) stand for no token, however the model scores them."""
    from conftest import tiny
    model = tiny(vocab_size=50).eval()
    with torch.no_grad():
        model.lm_head.weight[40:] = 10 * model.lm_head.weight[:10]  # the padding outscores the tokens
    idx = torch.zeros((1, 1), dtype=torch.long)
    torch.manual_seed(0)
    assert max(model.generate(idx, 30, temperature=0)[0].tolist()) >= 40  # drawn where nothing stops it
    for temperature in (0, 1.0):
        new = [t.item() for t in model.generate_tokens(idx, 30, temperature=temperature, n_tokens=40)]
        assert len(new) == 30 and max(new) < 40


# ----------------------------------------------------------------------------- data/prepare.py --tokenizer=bpe

@pytest.fixture(scope='module')
def bpe_run(tmp_path_factory):
    """data/prepare.py --tokenizer=bpe on a folder of three multilingual files, and a tiny model trained on it."""
    base = tmp_path_factory.mktemp('bpe')
    project = copy_project(base / 'project')
    corpus = base / 'corpus'
    (corpus / 'sub').mkdir(parents=True)
    val_only = 'ЖЁЖЁ ' * 300  # characters of the val part only (the last 10% of the characters): never merged
    texts = {'a.txt': multilingual_text(2500, seed=2),  # read in sorted path order: a.txt, b.txt, sub/c.txt
             'b.txt': multilingual_text(800, seed=3) + f'\r\n{EOT} is text here\r\n',
             'sub/c.txt': multilingual_text(700, seed=4) + val_only}
    for name, text in texts.items():
        (corpus / name).write_bytes(text.encode('utf-8'))
    proc = run_script(project, 'data/prepare.py', f'--input={corpus}', '--dataset=multi', '--tokenizer=bpe',
                      '--vocab_size=300')
    out = base / 'out'
    run_script(project, 'train.py', '--dataset=multi', *TRAIN_ARGS, '--max_iters=6', '--eval_interval=6',
               f'--out_dir={out}')
    stream = [text.replace('\r\n', '\n') for text in texts.values()]  # universal newlines
    return dict(project=project, corpus=corpus, out=out, data=project / 'data' / 'multi', stream=stream,
                stdout=proc.stdout, val_only=val_only)


def test_prepare_bpe_trains_on_the_training_part_and_separates_files(bpe_run):
    data = bpe_run['data']
    meta = load_meta(str(data))
    train, val = (np.fromfile(data / f'{split}.bin', dtype=np.uint16) for split in ('train', 'val'))
    assert meta == {'vocab_size': 300, 'tokenizer': 'bpe', 'tokenizer_file': 'tokenizer.json', 'dtype': 'uint16',
                    'files': {'train.bin': len(train), 'val.bin': len(val)}}
    assert sorted(p.name for p in data.iterdir()) == ['meta.pkl', 'tokenizer.json', 'train.bin', 'val.bin']
    table, special = token_bytes(meta, 'multi', str(data))
    assert special == {0} and table[0] == EOT.encode()
    # nothing of the val part was learnt: no merge holds its characters
    assert not any(len(t) > 1 and ('Ж'.encode() in t or 'Ё'.encode() in t) for t in table)
    ids = np.concatenate([train, val])
    assert np.count_nonzero(ids == 0) == 2  # <|endoftext|> between the three files; the one written in b.txt is text

    def text(part):
        return b''.join(table[i] for i in part if i != 0).decode('utf-8')
    documents = [text(d) for d in np.split(ids, np.flatnonzero(ids == 0))]
    assert documents == bpe_run['stream']
    joined = ''.join(bpe_run['stream'])  # <|endoftext|> is no text: the first 90% of the characters train
    split = int(len(joined) * 0.9)
    assert text(train) == joined[:split] and text(val) == joined[split:] and bpe_run['val_only'] in joined[split:]
    assert f"train has {len(train):,} tokens" in bpe_run['stdout']


def test_a_bpe_dataset_trains_samples_evaluates_and_benches(bpe_run):
    project, out = bpe_run['project'], bpe_run['out']
    ckpt = torch.load(out / 'ckpt.pt', map_location='cpu', weights_only=True)
    assert ckpt['model_args']['vocab_size'] == 300
    assert ckpt['tokenizer_fingerprint'] == tokenizer_fingerprint(load_meta(str(bpe_run['data'])), str(bpe_run['data']))
    assert ckpt['tokenizer_fingerprint'].startswith('bpe-300-')
    prompt = 'привет 世界 🙂'
    sample = ['sample.py', f'--out_dir={out}', '--device=cpu', f'--start={prompt}', '--max_new_tokens=40',
              '--temperature=1.0', '--top_k=300', '--seed=7']
    results = run_cases([dict(cwd=project, argv=[*sample, '--num_samples=1']),
                         dict(cwd=project, argv=[*sample, '--num_samples=2']),
                         dict(cwd=project, argv=['benchmarks/evaluate.py', f'--out_dir={out}', '--device=cpu']),
                         dict(cwd=project, argv=['bench.py', '--dataset=multi', '--device=cpu', '--compile=False',
                                                 '--n_layer=1', '--n_head=2', '--n_embd=16', '--block_size=16',
                                                 '--batch_size=2', '--burnin=1', '--num_steps=2'])])
    assert all(r['rc'] == 0 for r in results), [r['stderr'][-2000:] for r in results]
    streamed, whole = (r['stdout'].split('---------------')[0] for r in results[:2])
    # streamed token by token, a character split across tokens is printed once whole: the same text as decoding
    # the sample at once (the first of two samples, the same seed)
    streamed = ''.join(l for l in streamed.splitlines(True) if not l.startswith('Overriding'))
    whole = ''.join(l for l in whole.splitlines(True) if not l.startswith('Overriding'))
    assert streamed == whole and streamed.startswith(prompt) and len(streamed) > len(prompt) + 10
    assert 'generated 40 tokens' in results[0]['stderr']
    assert re.fullmatch(r'val loss \d\.\d{4} over [\d,]+ tokens, \d+\.\d{4} bits per byte over [\d,]+ bytes',
                        results[2]['stdout'].strip().splitlines()[-1])
    assert results[3]['stdout'].strip().splitlines()[-1].startswith('time per iteration: ')


# ----------------------------------------------------------------------------- bits per byte

@pytest.mark.parametrize('tokenizer', ['char', 'bpe'])
def test_bits_per_byte_against_a_hand_computation(tmp_path, monkeypatch, capsys, tokenizer):
    """evaluate.py's loss and bits per byte, computed here from the model's logits and the text's bytes:
    nats summed over every scored token (every token of val but the first, in windows of block_size)
    / ln 2 / the UTF-8 bytes of what those tokens stand for (<|endoftext|> stands for none)."""
    data = tmp_path / 'data'
    meta = text_dataset(data, multilingual_text(1500, seed=5), tokenizer, vocab_size=300)
    if tokenizer == 'bpe':  # an <|endoftext|> in val
        val = np.fromfile(data / 'val.bin', dtype=np.uint16)
        np.concatenate([val[:50], [0], val[50:]]).astype(np.uint16).tofile(data / 'val.bin')
        meta['files']['val.bin'] += 1  # as if prepared so: meta.pkl lists what the files hold
        (data / 'meta.pkl').write_bytes(pickle.dumps(meta))
    model = trained_checkpoint(tmp_path / 'out' / 'ckpt.pt', False, meta['vocab_size'], False, dataset=data)
    assert run_in_process(monkeypatch, 'benchmarks/evaluate.py', f'--out_dir={tmp_path}/out', '--device=cpu',
                          '--batch_size=3') is None
    m = re.fullmatch(r'val loss (\d\.\d{4}) over ([\d,]+) tokens, (\d\.\d{4}) bits per byte over ([\d,]+) bytes',
                     capsys.readouterr().out.strip().splitlines()[-1])
    val = np.fromfile(data / 'val.bin', dtype=np.uint16).astype(np.int64)
    nats, block = 0.0, 32
    with torch.no_grad():
        for start in range(0, len(val) - 1, block):
            x = torch.from_numpy(val[start:start + block + 1])
            logits, _ = model(x[None, :-1], x[None, :-1])  # with targets: every position's logits
            nats += F.cross_entropy(logits[0].double(), x[1:], reduction='sum').item()
    if tokenizer == 'char':
        byte_count = sum(len(meta['itos'][i].encode('utf-8')) for i in val[1:])
    else:
        table, _ = token_bytes(meta, 'the test', str(data))
        byte_count = sum(len(table[i]) for i in val[1:] if i != 0)
        assert byte_count < sum(len(table[i]) for i in val[1:])  # the <|endoftext|> is left out
    assert byte_count > len(val) - 1  # multibyte characters: bytes are not tokens
    assert int(m.group(2).replace(',', '')) == len(val) - 1 and int(m.group(4).replace(',', '')) == byte_count
    assert float(m.group(1)) == pytest.approx(nats / (len(val) - 1), abs=6e-5)
    assert float(m.group(3)) == pytest.approx(nats / math.log(2) / byte_count, abs=6e-5)


# ----------------------------------------------------------------------------- the tokenizer's fingerprint

def test_a_dataset_prepared_again_with_other_characters_is_caught(tmp_path):
    """A checkpoint records its dataset's tokenizer. The dataset prepared again from text of as many
    characters, but other ones, keeps vocab_size: resume, sample.py, evaluate.py and export_hf.py stop
    with one line; a checkpoint from before fingerprints still loads."""
    project = copy_project(tmp_path / 'project')
    source, other = tmp_path / 'a.txt', tmp_path / 'b.txt'
    text = multilingual_text(1500, seed=6)
    source.write_text(text, encoding='utf-8')
    shift = {c: chr(ord(c) + 1) for c in set(text)}  # the same number of characters, other ones
    other.write_text(''.join(shift[c] for c in text), encoding='utf-8')
    prepare = ['data/prepare.py', f'--dataset={tmp_path}/ds']
    run_script(project, *prepare, f'--input={source}')
    out = tmp_path / 'out'
    run_script(project, 'train.py', f'--dataset={tmp_path}/ds', *TRAIN_ARGS, '--max_iters=4', '--eval_interval=4',
               f'--out_dir={out}')
    ckpt = torch.load(out / 'ckpt.pt', map_location='cpu', weights_only=True)
    assert ckpt['tokenizer_fingerprint'].startswith(f"char-{len(shift)}-")
    old = tmp_path / 'old'
    old.mkdir()
    torch.save({k: v for k, v in ckpt.items() if k not in ('tokenizer_fingerprint', 'commands')}, old / 'ckpt.pt')
    assert run_script(project, *SAMPLE, f'--out_dir={old}', '--start=' + text[:5]).returncode == 0

    run_script(project, *prepare, f'--input={other}')
    assert load_meta(str(tmp_path / 'ds'))['vocab_size'] == ckpt['model_args']['vocab_size']
    before = snapshot(out, tmp_path / 'ds')
    results = run_cases([dict(cwd=project, argv=argv) for argv in (
        ['train.py', f'--dataset={tmp_path}/ds', *TRAIN_ARGS, '--max_iters=8', f'--out_dir={out}', '--init_from=resume'],
        [*SAMPLE, f'--out_dir={out}', '--start=' + shift[text[0]]],
        ['benchmarks/evaluate.py', f'--out_dir={out}', '--device=cpu'],
        ['export_hf.py', f'--out_dir={out}'])])
    for result in results:
        line = one_error_line(result)
        assert f"the model was trained with another tokenizer ({ckpt['tokenizer_fingerprint']}) than dataset " \
               f"{tmp_path}/ds has (char-{len(shift)}-" in line, line
    assert snapshot(out, tmp_path / 'ds') == before
    assert run_script(project, *SAMPLE, f'--out_dir={old}', '--start=' + shift[text[0]]).returncode == 0


# ----------------------------------------------------------------------------- bad inputs

def test_bad_inputs_are_one_line_and_change_nothing(bpe_run, tmp_path):
    project, out, base = bpe_run['project'], bpe_run['out'], tmp_path
    # texts
    (base / 'empty.txt').write_text('')
    (base / 'nul.txt').write_bytes(b'text\0\0\0binary')
    (base / 'random.bin.txt').write_bytes(bytes(random.Random(0).randrange(256) for _ in range(4000)))
    (base / 'small.txt').write_text(multilingual_text(200), encoding='utf-8')
    shutil.copytree(bpe_run['data'], base / 'existing')  # a dataset that a refused preparation must leave alone
    # datasets whose tokenizer file is missing, corrupt, or of another size; checkpoints trained on them
    for name in ('no_tok', 'bad_tok', 'other_tok', 'other_vocab'):
        shutil.copytree(bpe_run['data'], base / name)
    (base / 'no_tok' / 'tokenizer.json').unlink()
    (base / 'bad_tok' / 'tokenizer.json').write_bytes(b'{"version": "1.0", "model": ')
    (base / 'other_tok' / 'tokenizer.json').write_bytes(train_bpe([multilingual_text(3000)], 280).to_str().encode())
    text_dataset(base / 'other_vocab', multilingual_text(3000), 'bpe', vocab_size=280)
    ckpt = torch.load(out / 'ckpt.pt', map_location='cpu', weights_only=True)
    for name in ('no_tok', 'bad_tok', 'other_tok', 'other_vocab'):
        (base / f'ckpt_{name}').mkdir()
        torch.save(dict(ckpt, config=dict(ckpt['config'], dataset=str(base / name))), base / f'ckpt_{name}' / 'ckpt.pt')
    no_login = script_env(HF_HOME=str(base / 'hf_home'), HF_TOKEN='')
    no_login.pop('HF_TOKEN')
    prepare = ['data/prepare.py', f'--dataset={base}/existing']
    cases = [
        (prepare, 'vocab_size below 257', ['--tokenizer=bpe', '--vocab_size=256', f'--input={base}/small.txt'],
         "vocab_size=256: a byte-level BPE needs at least 257 tokens"),
        (prepare, 'bpe without vocab_size', ['--tokenizer=bpe', f'--input={base}/small.txt'], "vocab_size=0: "),
        (prepare, 'vocab_size the text cannot fill', ['--tokenizer=bpe', '--vocab_size=100000',
                                                     f'--input={base}/small.txt'],
         "vocab_size=100000 is more than the training text can fill: its BPE ran out of pairs to merge at "),
        (prepare, 'vocab_size for characters', ['--vocab_size=500', f'--input={base}/small.txt'],
         "vocab_size is for --tokenizer=bpe"),
        (prepare, 'empty input', ['--tokenizer=bpe', '--vocab_size=300', f'--input={base}/empty.txt'],
         f"{base}/empty.txt is too small to split: train gets 0 tokens and val 0"),
        (prepare, 'NUL bytes', ['--tokenizer=bpe', '--vocab_size=300', f'--input={base}/nul.txt'],
         f"{base}/nul.txt holds NUL bytes: a binary file, not text"),
        (prepare, 'random bytes', ['--tokenizer=bpe', '--vocab_size=300', f'--input={base}/random.bin.txt'],
         f"{base}/random.bin.txt is not valid UTF-8 (byte 0x"),
        (['train.py', *TRAIN_ARGS, '--max_iters=2'], 'tokenizer file missing at train time',
         [f'--dataset={base}/no_tok', f'--out_dir={base}/new_out'], f"{base}/no_tok/tokenizer.json is missing"),
        (['train.py', *TRAIN_ARGS, '--max_iters=8', '--init_from=resume'], 'tokenizer file corrupt at resume',
         [f'--dataset={base}/bad_tok', f'--out_dir={out}'], f"{base}/bad_tok/tokenizer.json is not a tokenizer file"),
        (SAMPLE, 'tokenizer file missing at sample time', [f'--out_dir={base}/ckpt_no_tok'],
         f"{base}/no_tok/tokenizer.json is missing"),
        (SAMPLE, 'tokenizer file corrupt at sample time', [f'--out_dir={base}/ckpt_bad_tok'],
         f"{base}/bad_tok/tokenizer.json is not a tokenizer file"),
        (SAMPLE, "tokenizer file of another size than meta.pkl's", [f'--out_dir={base}/ckpt_other_tok'],
         f"{base}/other_tok/tokenizer.json has 280 tokens, but the dataset's meta.pkl says vocab_size=300"),
        (SAMPLE, "a checkpoint whose vocabulary is not its dataset tokenizer's", [f'--out_dir={base}/ckpt_other_vocab'],
         f"the model's vocabulary (300 tokens) is not that of dataset {base}/other_vocab (280 tokens)"),
        (['benchmarks/evaluate.py', '--device=cpu'], "evaluating on another vocabulary",
         [f'--out_dir={out}', f'--dataset={base}/other_vocab'],
         f"the model's vocabulary (300 tokens) is not that of dataset {base}/other_vocab (280 tokens)"),
        (['export_hf.py'], 'tokenizer file missing at export time', [f'--out_dir={base}/ckpt_no_tok'],
         f"{base}/no_tok/tokenizer.json is missing"),
        (['export_hf.py'], 'tokenizer file corrupt at export time', [f'--out_dir={base}/ckpt_bad_tok'],
         f"{base}/bad_tok/tokenizer.json is not a tokenizer file"),
        (['export_hf.py'], "a checkpoint whose vocabulary is not its dataset tokenizer's",
         [f'--out_dir={base}/ckpt_other_vocab'], "the model's vocabulary (300 tokens) is not that of dataset"),
        (['export_hf.py'], 'push_to_hub without a login', [f'--out_dir={out}', '--push_to_hub=someone/model'],
         "push_to_hub needs a Hugging Face login: run hf auth login"),
        (['export_hf.py'], 'push_to_hub to a name the hub refuses', [f'--out_dir={out}', '--push_to_hub=a/b/c'],
         "push_to_hub='a/b/c' is not a repository name the hub takes"),
    ]
    before = snapshot(base, out, project / 'data')
    results = run_cases([dict(cwd=project, argv=[*script, *args], env=no_login) for script, _, args, _ in cases])
    for (_, name, _, expected), result in zip(cases, results):
        assert expected in one_error_line(result, name), name
    after = snapshot(base, out, project / 'data')
    assert sorted(map(str, set(after) ^ set(before))) == []  # nothing created, nothing removed
    assert [str(p) for p in before if before[p] != after[p]] == []  # nothing changed
