"""The prepare scripts, run for real in a copy of the project: data/shakespeare (GPT-2 BPE), data/prepare.py
(any text, char or gpt2, uint16 or uint32 tokens) and data/openwebtext's missing-package error."""

import random
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from conftest import TINY, copy_project, run_script, script_env
from nanogpt.data import load_meta

TRAIN_ARGS = [*TINY, '--max_iters=5', '--eval_interval=5', '--gradient_accumulation_steps=1']


@pytest.fixture(scope='module')
def proj(tmp_path_factory):
    """One copy of the project (scripts only, no data) for the data/prepare.py tests."""
    return copy_project(tmp_path_factory.mktemp('prepare'))


def read_meta(folder):
    return load_meta(str(folder))  # as the scripts read it: plain data only


def tokens(folder, split, meta):
    return np.fromfile(folder / f'{split}.bin', dtype=meta['dtype'])


def one_error_line(proc):
    """The stderr of a run that must fail with one clear line; returns that line."""
    assert proc.returncode != 0, proc.stdout
    assert 'Traceback' not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), proc.stderr
    return lines[0]


def gpt2_from_file(path):
    """tiktoken's GPT-2 BPE built straight from the ranks file, as a reference for the scripts' tokens."""
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe
    from tiktoken_ext.openai_public import r50k_pat_str
    return tiktoken.Encoding(name='gpt2-reference', pat_str=r50k_pat_str, mergeable_ranks=load_tiktoken_bpe(str(path)),
                             special_tokens={'<|endoftext|>': 50256})


def sample_text(stdout):
    """The first sample sample.py printed, without the Overriding lines and the final newline."""
    lines = [l for l in stdout.splitlines(True) if not l.startswith('Overriding')]
    return ''.join(lines).split('---------------')[0][:-1]


# ----------------------------------------------------------------------------- data/shakespeare

def test_shakespeare_bpe_counts(tmp_path, shakespeare_txt, gpt2_bpe):
    copy_project(tmp_path)
    run_script(tmp_path, "data/shakespeare/prepare.py")  # the shipped text; script_env sets NANOGPT_GPT2_BPE
    folder = tmp_path / 'data' / 'shakespeare'
    assert (folder / 'train.bin').stat().st_size == 2 * 301_966
    assert (folder / 'val.bin').stat().st_size == 2 * 36_059
    meta = read_meta(folder)
    assert meta['tokenizer'] == 'gpt2' and meta['dtype'] == 'uint16' and meta['vocab_size'] == 50304


def test_shakespeare_bpe_without_tokenizer_file(tmp_path, shakespeare_txt):
    # no network for certain: an empty tiktoken cache and a proxy nobody listens on
    env = script_env(TIKTOKEN_CACHE_DIR=str(tmp_path / 'tiktoken_cache'), HTTPS_PROXY='http://127.0.0.1:9',
                     https_proxy='http://127.0.0.1:9', NO_PROXY='', no_proxy='')
    env.pop('NANOGPT_GPT2_BPE', None)
    missing = tmp_path / 'nowhere' / 'gpt2.tiktoken'
    cases = [(tmp_path / 'unset', env, 'NANOGPT_GPT2_BPE'),
             (tmp_path / 'missing', dict(env, NANOGPT_GPT2_BPE=str(missing)), str(missing))]

    def run(case):
        folder, case_env, _ = case
        folder.mkdir()
        copy_project(folder)
        return run_script(folder, 'data/shakespeare/prepare.py', shakespeare_txt, env=case_env, check=False)

    with ThreadPoolExecutor(2) as pool:  # two independent runs, one per core
        results = list(pool.map(run, cases))
    for (folder, _, expected), proc in zip(cases, results):
        assert expected in one_error_line(proc)
        written = [p.name for p in (folder / 'data' / 'shakespeare').iterdir()]
        assert sorted(written) == ['prepare.py']  # no tokens or meta


# ----------------------------------------------------------------------------- data/prepare.py

def test_char_folder_trains_and_samples(proj, tmp_path, shakespeare_txt):
    text = shakespeare_txt.read_text(encoding='utf-8')
    corpus = tmp_path / 'corpus'
    (corpus / 'b').mkdir(parents=True)
    (corpus / 'sub' / 'deeper').mkdir(parents=True)
    (corpus / 'b' / '2.txt').write_text(text[:3000], encoding='utf-8')
    (corpus / 'a.txt').write_text(text[3000:5000], encoding='utf-8')
    (corpus / 'sub' / 'deeper' / 'c.txt').write_text(text[5000:8000] + 'é ü', encoding='utf-8')
    (corpus / 'notes.md').write_text('not a .txt file: left out', encoding='utf-8')
    files = sorted(str(p) for p in corpus.rglob('*.txt'))
    joined = '\n\n'.join(open(p, encoding='utf-8').read() for p in files)

    run_script(proj, 'data/prepare.py', f'--input={corpus}', '--dataset=folder_char', '--val_fraction=0.2')
    folder = proj / 'data' / 'folder_char'
    meta = read_meta(folder)
    chars = sorted(set(joined))
    assert meta['tokenizer'] == 'char' and meta['dtype'] == 'uint16' and meta['vocab_size'] == len(chars)
    assert meta['itos'] == dict(enumerate(chars)) and meta['stoi'] == {c: i for i, c in enumerate(chars)}
    train, val = tokens(folder, 'train', meta), tokens(folder, 'val', meta)
    assert len(train) == int(len(joined) * 0.8) and len(train) + len(val) == len(joined)
    assert ''.join(meta['itos'][int(i)] for i in np.concatenate([train, val])) == joined

    out = tmp_path / 'out'
    proc = run_script(proj, 'train.py', '--dataset=folder_char', *TRAIN_ARGS, f'--out_dir={out}')
    assert any(l.startswith('step 5: train loss') for l in proc.stdout.splitlines())
    proc = run_script(proj, 'sample.py', f'--out_dir={out}', '--device=cpu', '--num_samples=1', '--max_new_tokens=20',
                      '--start=ROMEO:')
    sample = sample_text(proc.stdout)
    assert sample.startswith('ROMEO:') and len(sample) == 6 + 20 and set(sample) <= set(chars)


def test_gpt2_file_trains_and_samples(proj, tmp_path, shakespeare_txt, gpt2_bpe):
    text = shakespeare_txt.read_text(encoding='utf-8')[:200_000]  # a few of the script's tokenizing pieces
    source = tmp_path / 'plays.txt'
    source.write_text(text, encoding='utf-8')

    run_script(proj, 'data/prepare.py', f'--input={source}', '--dataset=plays_gpt2', '--tokenizer=gpt2')
    folder = proj / 'data' / 'plays_gpt2'
    meta = read_meta(folder)
    train, val = tokens(folder, 'train', meta), tokens(folder, 'val', meta)
    assert meta == {'vocab_size': 50304, 'tokenizer': 'gpt2', 'dtype': 'uint16',
                    'files': {'train.bin': len(train), 'val.bin': len(val)}}
    enc = gpt2_from_file(gpt2_bpe)
    split = int(len(text) * 0.9)
    assert train.tolist() == enc.encode_ordinary(text[:split])  # piece by piece = the whole split at once
    assert val.tolist() == enc.encode_ordinary(text[split:])
    assert enc.decode(train.tolist()) + enc.decode(val.tolist()) == text

    out = tmp_path / 'out'
    proc = run_script(proj, 'train.py', '--dataset=plays_gpt2', *TRAIN_ARGS, f'--out_dir={out}')
    assert any(l.startswith('step 5: train loss') for l in proc.stdout.splitlines())
    proc = run_script(proj, 'sample.py', f'--out_dir={out}', '--device=cpu', '--num_samples=1', '--max_new_tokens=20',
                      '--start=ROMEO:')
    assert sample_text(proc.stdout).startswith('ROMEO:') and len(sample_text(proc.stdout)) > len('ROMEO:')
    assert 'generated 20 tokens' in proc.stderr


def test_uint32_char_dataset_trains_and_samples(proj, tmp_path):
    # 70,000 distinct characters from U+0100 up, the surrogates U+D800-U+DFFF (not encodable) left out
    alphabet = [chr(c) for c in range(0x100, 0x100 + 72_048) if not 0xD800 <= c <= 0xDFFF][:70_000]
    rng = random.Random(0)
    text = ''.join(rng.sample(alphabet, len(alphabet)) + rng.choices(alphabet[:50], k=20_000))
    source = tmp_path / 'wide.txt'
    source.write_text(text, encoding='utf-8')

    run_script(proj, 'data/prepare.py', f'--input={source}', '--dataset=wide_char')
    folder = proj / 'data' / 'wide_char'
    meta = read_meta(folder)
    assert meta['dtype'] == 'uint32' and meta['vocab_size'] == 70_000 and meta['tokenizer'] == 'char'
    n_train = int(len(text) * 0.9)
    assert (folder / 'train.bin').stat().st_size == 4 * n_train
    assert (folder / 'val.bin').stat().st_size == 4 * (len(text) - n_train)
    train = tokens(folder, 'train', meta)
    assert int(train.max()) > 65535 and ''.join(meta['itos'][int(i)] for i in train[:100]) == text[:100]

    out = tmp_path / 'out'
    small = ['--n_embd=16', '--n_layer=1', '--n_head=2', '--block_size=16', '--batch_size=2', '--max_iters=3',
             '--eval_interval=3', '--eval_iters=1', '--gradient_accumulation_steps=1', '--device=cpu',
             '--compile=False']
    run_script(proj, 'train.py', '--dataset=wide_char', *small, f'--out_dir={out}')
    prompt = tmp_path / 'prompt.txt'
    prompt.write_text(alphabet[-1], encoding='utf-8')  # a character beyond uint16's ids
    # stdout as UTF-8 whatever this machine's locale is
    proc = subprocess.run([sys.executable, 'sample.py', f'--out_dir={out}', '--device=cpu', '--num_samples=1',
                           '--max_new_tokens=10', f'--start=FILE:{prompt}'],
                          cwd=proj, env=script_env(PYTHONIOENCODING='utf-8'), capture_output=True, encoding='utf-8',
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    sample = sample_text(proc.stdout)
    assert sample[0] == alphabet[-1] and len(sample) == 11 and set(sample) <= set(alphabet)


def test_prepare_errors(proj, tmp_path):
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'empty' / 'readme.md').write_text('no text here\n')
    (tmp_path / 'mixed').mkdir()
    (tmp_path / 'mixed' / 'good.txt').write_text('fine text\n' * 20)
    (tmp_path / 'mixed' / 'bad.txt').write_bytes(b'caf\xe9 latin-1, not UTF-8\n')
    (tmp_path / 'tiny.txt').write_text('ab')
    (tmp_path / 'ok.txt').write_text('plenty of text to split\n' * 10)
    cases = [
        # (name, arguments, text expected in the error line)
        ('empty folder', [f'--input={tmp_path}/empty'], f'no .txt files in the folder {tmp_path}/empty'),
        ('undecodable file', [f'--input={tmp_path}/mixed'], f'{tmp_path}/mixed/bad.txt is not valid UTF-8'),
        ('too small to split', [f'--input={tmp_path}/tiny.txt'], 'too small to split: train gets 1 tokens and val 1'),
        ('missing input', [f'--input={tmp_path}/nope.txt'], f'{tmp_path}/nope.txt does not exist'),
        ('no --input', [], 'give the text and a name'),
        ('unknown tokenizer', [f'--input={tmp_path}/ok.txt', '--tokenizer=sentencepiece'], "tokenizer='sentencepiece'"),
        ('val_fraction of 1', [f'--input={tmp_path}/ok.txt', '--val_fraction=1'],
         'val_fraction must be between 0 and 1'),
    ]

    def run(i):
        return run_script(proj, 'data/prepare.py', *cases[i][1], f'--dataset=bad_{i}', check=False)

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(run, range(len(cases))))
    for i, ((name, args, expected), proc) in enumerate(zip(cases, results)):
        assert expected in one_error_line(proc), name
        assert not (proj / 'data' / f'bad_{i}').exists(), name  # nothing written
    proc = run_script(proj, 'data/prepare.py', f'--input={tmp_path}/ok.txt', check=False)  # no --dataset
    assert 'give the text and a name' in one_error_line(proc)


# ----------------------------------------------------------------------------- data/openwebtext

def test_openwebtext_without_datasets_package(tmp_path):
    copy_project(tmp_path)
    # whether or not datasets is installed here: a package of that name that fails to import stands in for its absence
    fake = tmp_path / 'no_datasets' / 'datasets'
    fake.mkdir(parents=True)
    (fake / '__init__.py').write_text("raise ImportError('datasets is not installed')\n")
    line = one_error_line(run_script(tmp_path, 'data/openwebtext/prepare.py', '--num_proc=1', check=False,
                                     env=script_env(PYTHONPATH=str(fake.parent))))
    assert 'pip install datasets' in line
    assert [p.name for p in (tmp_path / 'data' / 'openwebtext').iterdir()] == ['prepare.py']
