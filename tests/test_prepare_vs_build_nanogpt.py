"""benchmarks/prepare_vs_build_nanogpt.py end to end on a tiny Parquet corpus, with a stand-in written
here for build-nanogpt's fineweb.py (its checkout is not here): the runs, the token check, the table,
and one line where an input is missing or the tokens differ."""

import importlib.util

import numpy as np
import pytest

from conftest import copy_project, run_script
from test_corpus_prepare import DOCS, SHARD, reference_stream, write_parquet
from test_prepare import one_error_line

pytestmark = pytest.mark.skipif(not (importlib.util.find_spec('datasets') and importlib.util.find_spec('pyarrow')),
                                reason="needs the datasets and pyarrow packages")

# what build-nanogpt's fineweb.py does, written for this test: the hub's sample-10BT through datasets, each
# document as <|endoftext|> then its GPT-2 tokens, shards of shard_size tokens saved with np.save as
# edufineweb_val_000000.npy, edufineweb_train_000001.npy, ... beside the script, by nprocs workers
STAND_IN = '''
import multiprocessing as mp
import os
import numpy as np
import tiktoken
from datasets import load_dataset

shard_size = int(1e8)
docs = load_dataset("HuggingFaceFW/fineweb-edu", name="sample-10BT", split="train")
enc = tiktoken.get_encoding("gpt2")


def tokenize(doc):
    return np.array([enc.eot_token] + enc.encode_ordinary(doc["text"]){CHANGE}, dtype=np.uint16)


out = os.path.join(os.path.dirname(__file__), "edu_fineweb10B")
os.makedirs(out, exist_ok=True)
nprocs = max(1, os.cpu_count()//2)
with open(os.path.join(os.path.dirname(__file__), "nprocs.txt"), "w") as f:
    f.write(str(nprocs))
with mp.Pool(nprocs) as pool:
    stream = np.concatenate(list(pool.imap(tokenize, docs, chunksize=16)))
for i in range(0, len(stream), shard_size):
    split = "val" if i == 0 else "train"
    np.save(os.path.join(out, f"edufineweb_{split}_{i // shard_size:06d}"), stream[i:i + shard_size])
'''


def stand_in(folder, change=''):
    folder.mkdir()
    (folder / 'fineweb.py').write_text(STAND_IN.replace('{CHANGE}', change))
    return folder


def test_benchmark_runs_both_checks_the_tokens_and_prints_the_table(tmp_path, gpt2_bpe):
    project = copy_project(tmp_path / 'project')
    corpus = write_parquet(tmp_path / 'parquet', DOCS, parts=3)
    upstream = stand_in(tmp_path / 'build-nanogpt')
    proc = run_script(project, 'benchmarks/prepare_vs_build_nanogpt.py', f'--build_nanogpt={upstream}',
                      f'--source={corpus}', f'--shard_tokens={SHARD}', '--num_proc=2', '--keep=True')
    tokens = len(reference_stream(gpt2_bpe))
    lines = proc.stdout.splitlines()
    assert f"corpus: {corpus}, 3 Parquet files" in proc.stdout and f"{tokens:,} tokens" in proc.stdout
    title = lines.index("| run | wall time | tokens/s | CPU time | peak memory (PSS, all processes) | largest process "
                        "(peak RSS) |")
    rows = [line.split(' | ') for line in lines[title + 2:title + 5]]
    assert [r[0] for r in rows] == ["| build-nanogpt fineweb.py", "| prepare.py --source (Parquet)",
                                    "| prepare.py --repo (datasets' cache)"]
    for row in rows:
        wall, rate = float(row[1].rstrip('s')), int(row[2].replace(',', ''))
        assert abs(tokens / rate - wall) <= 0.05 + 1e-3 * wall, row  # the wall time is printed to 0.1s
        assert row[4].endswith(' MiB') and row[5].endswith(' MiB |') and float(row[3].rstrip('s')) > 0
        assert 0 < float(row[4].split()[0]) and 0 < float(row[5].split()[0])
    assert lines[-1] == f"tokens: identical in every run ({-(-tokens // SHARD)} shards)"
    # the copy it ran: its worker count and shard size set, nothing else changed
    work = project / 'bench_results' / 'prepare'
    assert (work / 'build-nanogpt' / 'nprocs.txt').read_text() == '2'
    ran = (work / 'build-nanogpt' / 'fineweb.py').read_text()
    assert ran == STAND_IN.replace('{CHANGE}', '').replace('int(1e8)', str(SHARD)).replace(
        'max(1, os.cpu_count()//2)', '2')
    shards = sorted((work / 'build-nanogpt' / 'edu_fineweb10B').iterdir(), key=lambda p: p.name.rsplit('_', 1)[1])
    stream = np.concatenate([np.load(p) for p in shards])
    assert np.array_equal(stream, reference_stream(gpt2_bpe))

    # other tokens (no <|endoftext|> before each document) are found, in one line
    other = stand_in(tmp_path / 'other', change='[1:]')
    proc = run_script(project, 'benchmarks/prepare_vs_build_nanogpt.py', f'--build_nanogpt={other}',
                      f'--source={corpus}', f'--shard_tokens={SHARD}', '--num_proc=1', check=False)
    assert "prepare.py --source (Parquet) wrote other tokens than build-nanogpt's fineweb.py" in one_error_line(proc)


def test_benchmark_inputs_missing_are_one_line(tmp_path):
    project = copy_project(tmp_path / 'project')
    corpus = write_parquet(tmp_path / 'parquet', DOCS[:4], parts=1)
    upstream = stand_in(tmp_path / 'build-nanogpt')
    old = tmp_path / 'old'
    old.mkdir()
    (old / 'fineweb.py').write_text(STAND_IN.replace('shard_size = int(1e8)', 'shard_size = 10**8'))
    jsonl = tmp_path / 'jsonl'
    jsonl.mkdir()
    (jsonl / 'a.jsonl').write_text('{"text": "a"}\n')
    for args, expected in [
        ([f'--source={corpus}'], "build_nanogpt='' has no fineweb.py; clone https://github.com/karpathy/build-nanogpt"),
        ([f'--build_nanogpt={old}', f'--source={corpus}'],
         f"{old}/fineweb.py has no line 'shard_size = int(1e8)' (another version?)"),
        ([f'--build_nanogpt={upstream}'], "give --source=DIR, a folder of FineWeb-Edu .parquet files"),
        ([f'--build_nanogpt={upstream}', f'--source={jsonl}'], f"{jsonl} holds .jsonl files; build-nanogpt's fineweb.py "
                                                              f"reads the hub's Parquet files"),
        ([f'--make_corpus={corpus}'], f"{corpus} is not empty; give a new folder to --make_corpus"),
    ]:
        proc = run_script(project, 'benchmarks/prepare_vs_build_nanogpt.py', *args, check=False)
        assert expected in one_error_line(proc), args
        assert not (project / 'bench_results').exists()


def test_make_corpus_writes_fineweb_edu_columns(tmp_path):
    import pyarrow.parquet as pq
    project = copy_project(tmp_path / 'project')
    run_script(project, 'benchmarks/prepare_vs_build_nanogpt.py', f'--make_corpus={tmp_path / "c"}', '--corpus_mb=1')
    files = sorted((tmp_path / 'c').iterdir())
    table = pq.read_table(files[0])
    assert len(files) == 1 and table.column_names == ['text', 'id', 'dump', 'url', 'file_path', 'language',
                                                      'language_score', 'token_count', 'score', 'int_score']
    text = (project / 'data' / 'shakespeare_char' / 'input.txt').read_text(encoding='utf-8')
    docs = table.column('text').to_pylist()
    assert 1_000_000 <= sum(map(len, docs)) < 1_200_000 and all(d in text for d in docs[:50])
