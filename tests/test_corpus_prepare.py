"""The prepare scripts of the large corpora, run for real on tiny local corpora: data/fineweb_edu (shards,
resume, Parquet and JSONL, the hub's loader on a local copy), data/openwebtext (upstream's split), their
error lines; and train.py, bench.py and HellaSwag on a sharded dataset."""

import importlib.util
import json
import os
import pickle
import runpy
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from conftest import REPO, SHAKESPEARE_TXT, TINY, copy_project, iter_lines, run_script, script_env
from nanogpt.files import read_metrics
from test_distributed import torchrun
from test_gpt2 import run_in_process
from test_hellaswag import EXAMPLES
from test_prepare import gpt2_from_file, one_error_line

EOT = 50256
SHARD = 1000  # tokens per shard in these tests
HAS_PYARROW = importlib.util.find_spec('pyarrow') is not None
HAS_DATASETS = importlib.util.find_spec('datasets') is not None


def corpus():
    """About 30 documents of tiny Shakespeare, of many lengths (one longer than a shard), one with
    non-ASCII text and one that writes <|endoftext|> as text."""
    text = SHAKESPEARE_TXT.read_text(encoding='utf-8')
    docs, start = [], 0
    for n in [1500, 40, 900, 6000, 3, 700, 2500] * 4 + [800]:
        docs.append(text[start:start + n])
        start += n
    docs[5] = "naïve café, 漢字 🙂 " + docs[5]
    docs[9] = docs[9][:200] + " <|endoftext|> is only text here " + docs[9][200:]
    return docs


DOCS = corpus()


def hf_env(tmp_path, **extra):
    """The scripts' environment with the Hugging Face cache in tmp_path and the hub switched off."""
    return script_env(HF_HOME=str(tmp_path / 'hf'), HF_HUB_OFFLINE='1', HF_DATASETS_OFFLINE='1', **extra)


def write_jsonl(folder, docs):
    folder.mkdir(parents=True)
    half = len(docs) // 2
    for name, part in (('a.jsonl', docs[:half]), ('b/c.jsonl', docs[half:])):
        (folder / name).parent.mkdir(exist_ok=True)
        lines = [json.dumps({'id': i, 'text': d}) for i, d in enumerate(part)]
        (folder / name).write_text('\n'.join(lines[:3] + [''] + lines[3:]) + '\n', encoding='utf-8')  # a blank line
    (folder / 'notes.md').write_text('not a corpus file')
    return folder


def write_parquet(folder, docs, parts=2):
    import pyarrow as pa
    import pyarrow.parquet as pq
    folder.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, len(docs), parts + 1).astype(int)
    for i in range(parts):
        part = docs[bounds[i]:bounds[i + 1]]
        table = pa.table({'text': part, 'score': [float(len(d)) for d in part]})
        pq.write_table(table, folder / f'{i:03d}_00000.parquet', row_group_size=4)
    return folder


def reference_stream(bpe, docs=DOCS):
    enc = gpt2_from_file(bpe)
    return np.concatenate([np.array([EOT] + enc.encode_ordinary(d), dtype=np.uint16) for d in docs])


def shard_files(folder):
    """The shards in folder in stream order: val_000.bin, then train_000.bin, ..."""
    return sorted((p.name for p in folder.iterdir() if p.name.endswith('.bin')), key=lambda n: (n != 'val_000.bin', n))


def expected_shards(stream):
    """{file name: tokens}: the first SHARD tokens are val_000.bin, the rest train_000.bin, ..."""
    pieces = [stream[i:i + SHARD] for i in range(0, len(stream), SHARD)]
    return {('val_000.bin' if i == 0 else f'train_{i - 1:03d}.bin'): p for i, p in enumerate(pieces)}


def assert_shards(folder, stream):
    expected = expected_shards(stream)
    assert shard_files(folder) == list(expected)
    for name, tokens in expected.items():
        assert np.array_equal(np.fromfile(folder / name, dtype=np.uint16), tokens), name


def snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def fineweb(project, *args, env=None, check=True):
    return run_script(project, 'data/fineweb_edu/prepare.py', f'--shard_tokens={SHARD}', '--num_proc=2', *args,
                      env=env, check=check)


@pytest.fixture(scope='module')
def prepared(tmp_path_factory, gpt2_bpe):
    """A project copy, a JSONL corpus, and FineWeb-Edu's prepare.py run on it once."""
    base = tmp_path_factory.mktemp('corpus')
    (base / 'project').mkdir()
    project = copy_project(base / 'project')
    source = write_jsonl(base / 'jsonl', DOCS)
    proc = fineweb(project, f'--source={source}', f'--dataset={base / "fw"}')
    return project, base, source, proc


def test_fineweb_shards_resume_and_train(prepared, gpt2_bpe, tmp_path):
    project, base, source, proc = prepared
    folder = base / 'fw'
    stream = reference_stream(gpt2_bpe)
    assert len(stream) > 10 * SHARD
    assert_shards(folder, stream)
    meta = pickle.loads((folder / 'meta.pkl').read_bytes())
    assert meta == {'vocab_size': 50304, 'tokenizer': 'gpt2', 'dtype': 'uint16', 'source': str(source),
                    'shard_tokens': SHARD, 'complete': True, 'train_tokens': len(stream) - SHARD, 'val_tokens': SHARD,
                    'files': {name: len(tokens) for name, tokens in expected_shards(stream).items()}}
    n_train = len(expected_shards(stream)) - 1
    assert f"wrote {folder}: val_000.bin (1,000 tokens), train_000.bin to train_{n_train - 1:03d}.bin " \
           f"({len(stream) - SHARD:,} tokens), meta.pkl" in proc.stdout

    # a run that stopped after 7 complete shards, killed while writing the 8th
    resumed = tmp_path / 'fw'
    shutil.copytree(folder, resumed)
    for name in shard_files(resumed)[7:]:
        (resumed / name).unlink()
    (resumed / 'meta.pkl').write_bytes(pickle.dumps(dict(meta, complete=False)))
    (resumed / 'train_006.bin.tmp').write_bytes(b'torn')
    kept = np.fromfile(resumed / 'train_002.bin', dtype=np.uint16)
    marked = np.where(kept == EOT, EOT, 7).astype(np.uint16)  # the same documents, other tokens: shows a rewrite
    marked.tofile(resumed / 'train_002.bin')
    out = fineweb(project, f'--source={source}', f'--dataset={resumed}').stdout
    assert 'continuing after 7 complete shards' in out
    assert np.array_equal(np.fromfile(resumed / 'train_002.bin', dtype=np.uint16), marked)  # not written again
    expected = expected_shards(stream)
    assert shard_files(resumed) == list(expected) and not (resumed / 'train_006.bin.tmp').exists()
    for name in list(expected)[7:]:
        assert np.array_equal(np.fromfile(resumed / name, dtype=np.uint16), expected[name]), name
    assert pickle.loads((resumed / 'meta.pkl').read_bytes()) == meta

    # run again when complete: nothing to do, nothing changed
    before = snapshot(folder)
    assert 'is prepared already' in fineweb(project, f'--source={source}', f'--dataset={folder}').stdout
    assert snapshot(folder) == before

    # train.py reads the shards as one split, and scores HellaSwag every 2 iterations and at the end
    hellaswag_file = tmp_path / 'hellaswag.jsonl'
    hellaswag_file.write_text(''.join(json.dumps(e) + '\n' for e in EXAMPLES))
    out_dir = tmp_path / 'out'
    proc = run_script(project, 'train.py', *TINY, f'--dataset={folder}', f'--out_dir={out_dir}', '--max_iters=5',
                      '--eval_interval=5', '--gradient_accumulation_steps=1', '--hellaswag_interval=2',
                      f'--hellaswag_path={hellaswag_file}')
    assert [int(m.group(1)) for m in iter_lines(proc.stdout)] == list(range(5))
    lines = [line for line in proc.stdout.splitlines() if line.startswith('hellaswag ')]
    assert [line.split(':')[0] for line in lines] == ['hellaswag 0', 'hellaswag 2', 'hellaswag 4', 'hellaswag 5']
    assert all(f', {len(EXAMPLES)} examples, ' in line for line in lines), lines
    rows = [r for r in read_metrics(out_dir / 'metrics.jsonl') if 'hellaswag_acc_norm' in r]
    assert [r['iter'] for r in rows] == [0, 2, 4, 5] and all(0 <= r['hellaswag_acc_norm'] <= 1 for r in rows)
    assert f"acc_norm {rows[-1]['hellaswag_acc_norm']:.4f}, acc {rows[-1]['hellaswag_acc']:.4f}" in lines[-1]
    # resumed at 5, where the checkpoint was saved after scoring: not scored again, its row kept
    proc = run_script(project, 'train.py', *TINY, f'--dataset={folder}', f'--out_dir={out_dir}', '--max_iters=7',
                      '--eval_interval=5', '--gradient_accumulation_steps=1', '--hellaswag_interval=2',
                      f'--hellaswag_path={hellaswag_file}', '--init_from=resume')
    assert [line.split(':')[0] for line in proc.stdout.splitlines() if line.startswith('hellaswag ')] == \
        ['hellaswag 6', 'hellaswag 7']
    assert [r['iter'] for r in read_metrics(out_dir / 'metrics.jsonl') if 'hellaswag_acc_norm' in r] == [0, 2, 4, 5, 6, 7]

    # under torchrun the examples are shared out (7 between 2 ranks: one pads), with FSDP's collectives
    # on every rank alike; at iteration 0 the weights are the single process's, and so are the scores
    proc = torchrun(project, 'train.py', *TINY, f'--dataset={folder}', f'--out_dir={tmp_path / "fsdp"}', '--max_iters=1',
                    '--eval_interval=1', '--gradient_accumulation_steps=2', '--fsdp=True', '--hellaswag_interval=1',
                    f'--hellaswag_path={hellaswag_file}')
    fsdp_lines = [line for line in proc.stdout.splitlines() if line.startswith('hellaswag ')]
    assert [line.split(':')[0] for line in fsdp_lines] == ['hellaswag 0', 'hellaswag 1']
    assert fsdp_lines[0].rsplit(', ', 1)[0] == lines[0].rsplit(', ', 1)[0]  # all but the time
    proc = run_script(project, 'bench.py', '--device=cpu', f'--dataset={folder}', '--n_layer=1', '--n_head=2',
                      '--n_embd=16', '--block_size=32', '--batch_size=2', '--compile=False', '--burnin=1',
                      '--num_steps=2')
    assert proc.stdout.strip().splitlines()[-1].startswith('time per iteration: ')


@pytest.mark.skipif(not HAS_PYARROW, reason="pyarrow is not installed")
def test_fineweb_from_parquet_matches_jsonl(prepared, tmp_path):
    project, base, _, _ = prepared
    source = write_parquet(tmp_path / 'parquet', DOCS, parts=3)
    fineweb(project, f'--source={source}', f'--dataset={tmp_path / "fw"}')
    assert snapshot(tmp_path / 'fw').keys() == snapshot(base / 'fw').keys()
    for name in shard_files(base / 'fw'):
        assert (tmp_path / 'fw' / name).read_bytes() == (base / 'fw' / name).read_bytes(), name


def test_fineweb_bad_input(prepared, tmp_path, monkeypatch, gpt2_bpe):
    project, base, _, _ = prepared
    bad_jsonl = tmp_path / 'bad_jsonl'
    bad_jsonl.mkdir()
    (bad_jsonl / 'a.jsonl').write_text('{"text": "fine"}\n{"body": "no text"}\n')
    mixed = write_jsonl(tmp_path / 'mixed', DOCS[:3])
    (mixed / 'x.parquet').write_bytes(b'')
    (tmp_path / 'empty').mkdir()
    hub = tmp_path / 'hub'  # a copy of the hub's layout with two subsets
    write_jsonl(hub / 'sample' / '10BT', DOCS[:3])
    write_jsonl(hub / 'sample' / '100BT', DOCS[3:6])
    # an interrupted preparation of `source` (two complete shards), whose corpus then turns out broken
    # in a document it has not reached: the shards it holds must survive every failed run below
    source = write_jsonl(tmp_path / 'source', DOCS)
    partial = tmp_path / 'partial'
    partial.mkdir()
    for name in ('val_000.bin', 'train_000.bin'):
        shutil.copy(base / 'fw' / name, partial / name)
    meta = dict(pickle.loads((base / 'fw' / 'meta.pkl').read_bytes()), source=str(source), complete=False)
    (partial / 'meta.pkl').write_bytes(pickle.dumps(meta))
    lines = (source / 'a.jsonl').read_text().splitlines()
    (source / 'a.jsonl').write_text('\n'.join(lines[:-1] + ['{"text": 3}']) + '\n')
    before = snapshot(partial)

    # refused before anything is written: in this process, as the script would run
    early = [
        ([f'--source={mixed}'], f"{mixed} holds both .parquet and .jsonl files"),
        ([f'--source={tmp_path / "empty"}'], f"no .parquet or .jsonl files in the folder {tmp_path / 'empty'}"),
        ([f'--source={tmp_path / "nowhere"}'], f"source={tmp_path / 'nowhere'} is not a folder"),
        ([f'--source={hub}'], f"{hub} holds 2 subsets of the hub's FineWeb-Edu (sample/100BT, sample/10BT), which "
                              f"would be mixed; give the folder of one, e.g. --source={hub / 'sample' / '10BT'}"),
        (['--subset=sample-1BT'], "unknown subset 'sample-1BT'; use one of sample-10BT, sample-100BT"),
        ([], "reading FineWeb-Edu from the hub needs the datasets package: pip install datasets"),
        ([f'--source={source}', '--shard_tokens=500'],
         f"{partial} holds shards of {source} with shard_tokens=1000; run with those to continue"),
    ]
    if HAS_PYARROW:
        corrupt = write_parquet(tmp_path / 'corrupt', DOCS)
        (corrupt / '001_00000.parquet').write_bytes((corrupt / '001_00000.parquet').read_bytes()[:-100])  # cut short
        early.append(([f'--source={corrupt}'], f"{corrupt / '001_00000.parquet'} is not a readable Parquet file"))
    monkeypatch.setitem(sys.modules, 'datasets', None)  # as if not installed: importing it fails
    monkeypatch.setenv('NANOGPT_GPT2_BPE', str(gpt2_bpe))
    for i, (args, expected) in enumerate(early):
        out = partial if 'shard_tokens=500' in ' '.join(args) else tmp_path / f'out{i}'
        e = run_in_process(monkeypatch, 'data/fineweb_edu/prepare.py', f'--dataset={out}', *args)
        assert e is not None and e.code.startswith('error: ') and expected in e.code and '\n' not in e.code, (args, e)
        assert out == partial or not out.exists()

    # met while reading, in the worker pool: the real script in its own process
    late = [
        ([f'--source={bad_jsonl}'], f"{bad_jsonl / 'a.jsonl'} line 2 has no 'text' string", tmp_path / 'late0'),
        ([f'--source={base / "jsonl"}', f'--shard_tokens={10 ** 6}'],
         f"the corpus has {meta['train_tokens'] + SHARD:,} tokens, all of them in val_000.bin: nothing to train on",
         tmp_path / 'late1'),
        ([f'--source={source}', f'--shard_tokens={SHARD}'], f"{source / 'a.jsonl'} line {len(lines)} has no 'text'",
         partial),
    ]

    def run(case):
        args, _, out = case
        return run_script(project, 'data/fineweb_edu/prepare.py', '--num_proc=1', f'--dataset={out}', *args, check=False)

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(run, late))
    for (args, expected, _), proc in zip(late, results):
        assert expected in one_error_line(proc), (args, proc.stderr)
    after = snapshot(partial)
    assert all(after[name] == data for name, data in before.items() if name != 'meta.pkl')  # no shard lost
    assert not any(name.endswith('.tmp') for name in after)
    assert all(len(data) == 2 * SHARD for name, data in after.items() if name.endswith('.bin'))  # only whole shards


@pytest.mark.skipif(not (HAS_DATASETS and HAS_PYARROW), reason="needs the datasets and pyarrow packages")
def test_fineweb_through_the_hub_loader_on_a_local_copy(prepared, gpt2_bpe, tmp_path):
    """--repo=a local folder in the hub's layout: the code path of the real download, offline."""
    project = prepared[0]
    repo = tmp_path / 'fineweb-edu'
    write_parquet(repo / 'sample' / '10BT', DOCS, parts=3)
    write_parquet(repo / 'sample' / '100BT', DOCS[:5], parts=1)
    (repo / 'README.md').write_text("---\nconfigs:\n"
                                    "- config_name: sample-10BT\n  data_files:\n  - split: train\n    path: sample/10BT/*\n"
                                    "- config_name: sample-100BT\n  data_files:\n  - split: train\n    path: sample/100BT/*\n"
                                    "---\n")
    stream = reference_stream(gpt2_bpe)
    env = hf_env(tmp_path)
    fineweb(project, f'--repo={repo}', f'--dataset={tmp_path / "cached"}', env=env)
    assert_shards(tmp_path / 'cached', stream)
    meta = pickle.loads((tmp_path / 'cached' / 'meta.pkl').read_bytes())
    assert meta['source'] == f"{repo} sample-10BT"
    # interrupted after 6 shards: the resumed run passes over the documents written, in datasets' cache
    for name in shard_files(tmp_path / 'cached')[6:]:
        (tmp_path / 'cached' / name).unlink()
    (tmp_path / 'cached' / 'meta.pkl').write_bytes(pickle.dumps(dict(meta, complete=False)))
    assert 'continuing after 6 complete shards' in fineweb(project, f'--repo={repo}', f'--dataset={tmp_path / "cached"}',
                                                          env=env).stdout
    assert_shards(tmp_path / 'cached', stream)
    # streamed, and interrupted after 4 shards: the resumed run passes over the documents already written
    streamed = tmp_path / 'streamed'
    fineweb(project, f'--repo={repo}', f'--dataset={streamed}', '--streaming=True', env=env)
    for name in shard_files(streamed)[4:]:
        (streamed / name).unlink()
    meta = pickle.loads((streamed / 'meta.pkl').read_bytes())
    (streamed / 'meta.pkl').write_bytes(pickle.dumps(dict(meta, complete=False)))
    assert 'continuing after 4 complete shards' in fineweb(project, f'--repo={repo}', f'--dataset={streamed}',
                                                          '--streaming=True', env=env).stdout
    assert_shards(streamed, stream)
    fineweb(project, f'--repo={repo}', '--subset=sample-100BT', f'--dataset={tmp_path / "other"}', env=env)
    assert_shards(tmp_path / 'other', reference_stream(gpt2_bpe, DOCS[:5]))


@pytest.mark.skipif(not (HAS_DATASETS and HAS_PYARROW), reason="needs the datasets and pyarrow packages")
def test_openwebtext_split_from_a_local_folder(gpt2_bpe, tmp_path):
    import datasets
    enc = gpt2_from_file(gpt2_bpe)
    # upstream's split of the same documents, computed here with the same call
    split = datasets.Dataset.from_dict({'text': DOCS}).train_test_split(test_size=0.0005, seed=2357, shuffle=True)
    expected = {name: np.concatenate([np.array(enc.encode_ordinary(d) + [EOT], dtype=np.uint16) for d in docs['text']])
                for name, docs in (('train', split['train']), ('val', split['test']))}
    assert len(split['test']) == 1 and split['test'][0]['text'] != DOCS[-1]  # shuffled: not just the last document
    env = hf_env(tmp_path)
    sources = [write_jsonl(tmp_path / 'jsonl', DOCS), write_parquet(tmp_path / 'parquet', DOCS, parts=3)]

    def prepare(i):
        (tmp_path / f'project{i}').mkdir()
        project = copy_project(tmp_path / f'project{i}')
        run_script(project, 'data/openwebtext/prepare.py', f'--source={sources[i]}', '--num_proc=2', env=env)
        return project / 'data' / 'openwebtext'

    with ThreadPoolExecutor(2) as pool:
        folders = list(pool.map(prepare, range(2)))
    for folder in folders:
        for name, tokens in expected.items():
            assert np.array_equal(np.fromfile(folder / f'{name}.bin', dtype=np.uint16), tokens), (folder, name)
        assert pickle.loads((folder / 'meta.pkl').read_bytes()) == {
            'vocab_size': 50304, 'tokenizer': 'gpt2', 'dtype': 'uint16',
            'files': {f'{name}.bin': len(tokens) for name, tokens in expected.items()}}

    # bad input: one line each, and the dataset prepared above stays as it was
    folder = folders[0]
    before = snapshot(folder)
    corrupt = write_parquet(tmp_path / 'corrupt', DOCS)
    (corrupt / '000_00000.parquet').write_bytes(b'PAR1 not really')
    no_text = tmp_path / 'no_text'
    no_text.mkdir()
    (no_text / 'a.jsonl').write_text('{"body": "x"}\n{"body": "y"}\n')
    one_without = tmp_path / 'one_without'
    one_without.mkdir()
    (one_without / 'a.jsonl').write_text('{"text": "a"}\n{"body": "no text"}\n{"text": null}\n{"text": "b"}\n')
    cases = [([f'--source={corrupt}'], f"{corrupt / '000_00000.parquet'} is not a readable Parquet file"),
             ([f'--source={no_text}'], f"the corpus in {no_text} has no 'text' column (it has body)"),
             ([f'--source={one_without}'], f"2 document(s) of the corpus in {one_without} have no text (the first: "
                                            f"document 2 in the corpus's order, counted from 1)"),
             ([f'--hub_files={tmp_path / "parquet"}/*.parquet'],
              f"{tmp_path / 'parquet'}/*.parquet holds {len(DOCS)} documents, OpenWebText 8,013,769")]

    def run(case):
        return run_script(folder.parent.parent, 'data/openwebtext/prepare.py', *case[0], '--num_proc=1', env=env,
                          check=False)

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(run, cases))
    for (args, expected_line), proc in zip(cases, results):
        assert expected_line in one_error_line(proc), args
    assert snapshot(folder) == before


def test_gpt2_fineweb_config(monkeypatch):
    config = runpy.run_path(str(REPO / 'config' / 'train_gpt2_fineweb.py'))
    tokens = config['batch_size'] * config['block_size'] * config['gradient_accumulation_steps']
    assert tokens == 2 ** 19 and config['gradient_accumulation_steps'] % 16 == 0  # ~0.5M; 1 to 16 GPUs
    assert 9.99e9 < tokens * config['max_iters'] <= 10e9 and config['lr_decay_iters'] == config['max_iters']
    assert (config['n_layer'], config['n_head'], config['n_embd'], config['dataset']) == (12, 12, 768, 'fineweb_edu')
    assert config['hellaswag_interval'] > 0
    # one ordered pass; the val loss over build-nanogpt's 20 x 64 rows (on one GPU) at each evaluation
    assert config['data_order'] == 'sequential' and config['fixed_val_set']
    assert config['eval_iters'] * config['batch_size'] == 20 * 64
    # train.py takes every key (and stops at the first check, before any device or data)
    e = run_in_process(monkeypatch, 'train.py', REPO / 'config' / 'train_gpt2_fineweb.py', '--batch_size=0')
    assert e.code == 'error: batch_size must be a positive integer, got 0'
    e = run_in_process(monkeypatch, 'train.py', REPO / 'config' / 'train_gpt2_fineweb.py', '--hellaswag_interval=-1')
    assert e.code == 'error: hellaswag_interval must be 0 (never) or more, got -1'


def interrupt(command, cwd, env, ready):
    """Runs command in a process group of its own, and once ready(process) says so sends SIGINT to the whole
    group, as Ctrl-C in a terminal does; returns the finished process and its stdout and stderr."""
    proc = subprocess.Popen([sys.executable, *map(str, command)], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 120
    while not ready(proc) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the command ended before it was interrupted"
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return proc, out, err


def children(pid):
    """The processes pid started, from /proc."""
    found = []
    for task in os.listdir(f'/proc/{pid}/task') if os.path.isdir(f'/proc/{pid}/task') else []:
        try:
            with open(f'/proc/{pid}/task/{task}/children') as f:
                found += f.read().split()
        except OSError:
            pass
    return found


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason="finds the worker processes in /proc")
def test_ctrl_c_during_a_preparation_is_one_line_from_the_main_process(prepared, gpt2_bpe, tmp_path):
    """Ctrl-C reaches the script and its worker processes: one line, from the script, exit code 130; a
    FineWeb-Edu preparation keeps its complete shards and the same command continues from them."""
    project, base, _, _ = prepared
    source = write_jsonl(tmp_path / 'big', DOCS * 40)  # seconds of work for two workers
    out_dir = tmp_path / 'fw'

    def first_shard(proc):
        return (out_dir / 'val_000.bin').exists()

    proc, out, err = interrupt(['data/fineweb_edu/prepare.py', f'--source={source}', f'--dataset={out_dir}',
                                f'--shard_tokens={SHARD}', '--num_proc=2'], project, script_env(), first_shard)
    assert proc.returncode == 130 and 'Traceback' not in err, err
    done = len(existing := [n for n in shard_files(out_dir)])
    assert err.strip().splitlines() == [f"error: interrupted: {done} complete shards in {out_dir}; the same command "
                                        f"continues from there"], err
    assert not any(name.endswith('.tmp') for name in os.listdir(out_dir)) and existing
    fineweb(project, f'--source={source}', f'--dataset={out_dir}')
    assert_shards(out_dir, reference_stream(gpt2_bpe, DOCS * 40))

    if HAS_DATASETS:  # openwebtext: datasets' worker processes
        (tmp_path / 'owt').mkdir()
        owt = copy_project(tmp_path / 'owt')
        command = ['data/openwebtext/prepare.py', f'--source={source}', '--num_proc=2']
        proc, out, err = interrupt(command, owt, hf_env(tmp_path), lambda p: len(children(p.pid)) >= 2)
        assert proc.returncode == 130 and 'Traceback' not in err, err
        assert err.strip().splitlines() == [f"error: interrupted: train.bin and val.bin in {owt / 'data' / 'openwebtext'} "
                                            f"are as they were; the same command starts again (datasets' cache keeps "
                                            f"what it downloaded)"], err
        assert not any(p.suffix in ('.bin', '.pkl', '.tmp') for p in (owt / 'data' / 'openwebtext').iterdir())


def test_preparation_uses_a_worker_per_core(monkeypatch, capsys):
    e = run_in_process(monkeypatch, 'data/fineweb_edu/prepare.py', '--help')
    assert e.code == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.strip().startswith('--num_proc'))
    assert int(line.split()[1]) == len(os.sched_getaffinity(0)) >= 1, line
