"""
Preparing FineWeb-Edu: data/fineweb_edu/prepare.py against build-nanogpt's fineweb.py on the same local
Parquet corpus, with the same number of worker processes, one run after the other. Prints, for each,
the wall time, tokens/s and peak memory, and checks that every run wrote the same tokens.
$ python benchmarks/prepare_vs_build_nanogpt.py --build_nanogpt=../build-nanogpt --source=DIR [--num_proc=N] [--shard_tokens=N] [--rounds=3]
A corpus to try it on (tiny Shakespeare cut into documents, in FineWeb-Edu's columns; for a real
measurement use FineWeb-Edu's own Parquet files, e.g. a few of sample/10BT):
$ python benchmarks/prepare_vs_build_nanogpt.py --make_corpus=DIR [--corpus_mb=100]

The runs, each a whole command (start-up included) in a fresh output folder:
- build-nanogpt: its fineweb.py (--build_nanogpt is a checkout of https://github.com/karpathy/build-nanogpt),
  copied into the work folder (it writes its shards beside itself) with two settings lines replaced:
  nprocs (its max(1, cpu_count // 2)) by num_proc, and shard_size (100M) by shard_tokens where that
  differs. It calls datasets.load_dataset("HuggingFaceFW/fineweb-edu", name="sample-10BT"), which finds
  HuggingFaceFW/fineweb-edu in the work folder: a local copy in the hub's layout (sample/10BT/ holding
  links to the corpus's files, a README.md naming the subset), read offline. datasets turns the Parquet
  files into its Arrow cache on the first call: that is done once before the runs, by the same call,
  timed and printed on its own, not in fineweb.py's figures. Where tiktoken cannot download GPT-2's BPE,
  the file NANOGPT_GPT2_BPE names is registered with tiktoken as 'gpt2' first (the same ranks).
- this toolkit, twice: prepare.py --source=the corpus (pyarrow reads the Parquet files itself), and
  prepare.py --repo=the same local copy (through datasets' cache, as fineweb.py reads it).
Tokens/s is the tokens written over the wall time; CPU time is that of all the command's processes (a
figure that a busy machine disturbs less than the wall time). Peak memory is the largest sum, over the command's
processes (the main one and its workers), of their proportional set size (PSS: shared pages split among
the processes that share them), sampled every 20 ms from /proc (Linux); the largest single process's
peak RSS is printed beside it. With rounds > 1 the runs alternate and each figure is the median.
Every run's shards must hold build-nanogpt's tokens, shard for shard, or the script ends with exit 1.
"""

import glob
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configurator import configure  # noqa: E402
from nanogpt import ScriptError  # noqa: E402
from nanogpt.corpus import cores, corpus_files, existing_shards  # noqa: E402

# -----------------------------------------------------------------------------
build_nanogpt = ''  # a checkout of karpathy/build-nanogpt (its fineweb.py is run)
source = ''  # a folder of FineWeb-Edu's .parquet files (a 'text' column), read by every run
num_proc = cores()  # worker processes, for every run (prepare.py's default)
shard_tokens = 100_000_000  # tokens per shard (build-nanogpt's); the corpus must hold more (prepare.py needs a train shard)
rounds = 1  # each run this many times, alternating
work_dir = os.path.join(ROOT, 'bench_results', 'prepare')  # the runs' outputs and datasets' cache (emptied first)
keep = False  # keep work_dir's shards and cache afterwards
make_corpus = ''  # instead of the runs: write a Parquet corpus here (tiny Shakespeare cut into documents)
corpus_mb = 100  # its size in MB of text
# -----------------------------------------------------------------------------
configure(globals(), positive_ints=('num_proc', 'shard_tokens', 'rounds', 'corpus_mb'))
UPSTREAM_SETTINGS = {'shard_size = int(1e8)': f'shard_size = {shard_tokens}',
                     'nprocs = max(1, os.cpu_count()//2)': f'nprocs = {num_proc}'}
# runs fineweb.py as `python fineweb.py` would, with GPT-2's BPE from NANOGPT_GPT2_BPE where tiktoken cannot download it
UPSTREAM_RUNNER = '''
import os, runpy, sys
import tiktoken, tiktoken.registry
try:
    tiktoken.get_encoding("gpt2")
except Exception:
    from tiktoken.load import load_tiktoken_bpe
    from tiktoken_ext.openai_public import r50k_pat_str
    tiktoken.registry.ENCODINGS["gpt2"] = tiktoken.Encoding(
        name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=load_tiktoken_bpe(os.environ["NANOGPT_GPT2_BPE"]),
        special_tokens={"<|endoftext|>": 50256})
sys.argv = ["fineweb.py"]
runpy.run_path("fineweb.py", run_name="__main__")
'''
HUB_README = """---
configs:
- config_name: sample-10BT
  data_files:
  - split: train
    path: sample/10BT/*
---
"""
FINEWEB_EDU_COLUMNS = ('text', 'id', 'dump', 'url', 'file_path', 'language', 'language_score', 'token_count',
                       'score', 'int_score')


def write_corpus(folder, megabytes):
    """Parquet files of documents cut from tiny Shakespeare at random places, of FineWeb-Edu's lengths
    (lognormal, median about 3,000 characters), in FineWeb-Edu's columns (token_count is a guess)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from nanogpt.data import SHAKESPEARE_TXT
    if os.path.exists(folder) and os.listdir(folder):
        raise ScriptError(f"{folder} is not empty; give a new folder to --make_corpus")
    os.makedirs(folder, exist_ok=True)
    with open(SHAKESPEARE_TXT, encoding='utf-8') as f:
        text = f.read()
    rng = np.random.default_rng(0)
    per_file = 25_000_000
    for index in range(-(-megabytes * 1_000_000 // per_file)):
        docs, size = [], 0
        while size < min(per_file, megabytes * 1_000_000 - index * per_file):
            n = int(min(rng.lognormal(8.0, 1.0), 100_000))
            start = int(rng.integers(0, len(text) - n))
            docs.append(text[start:start + n])
            size += n
        k = len(docs)
        table = pa.table({'text': docs, 'id': [f'<urn:uuid:{index}-{i}>' for i in range(k)],
                          'dump': ['CC-MAIN-2013-20'] * k, 'url': [f'http://example.com/{index}/{i}' for i in range(k)],
                          'file_path': ['s3://commoncrawl/crawl-data/CC-MAIN-2013-20/segments/x.warc.gz'] * k,
                          'language': ['en'] * k, 'language_score': rng.uniform(0.65, 1.0, k),
                          'token_count': [len(d) // 4 for d in docs], 'score': rng.uniform(2.5, 5.0, k),
                          'int_score': rng.integers(3, 6, k)})
        assert table.column_names == list(FINEWEB_EDU_COLUMNS)
        pq.write_table(table, os.path.join(folder, f'{index:03d}_00000.parquet'), row_group_size=1000)
    print(f"wrote {folder}: {len(os.listdir(folder))} Parquet files, {megabytes} MB of text")


def process_tree(pid):
    """pid and every process below it, from /proc: each process's list of children where the kernel keeps
    one, else every process's parent."""
    tree = [pid]
    if os.path.exists(f'/proc/{pid}/task/{pid}/children'):
        for p in tree:
            try:
                for task in os.listdir(f'/proc/{p}/task'):
                    with open(f'/proc/{p}/task/{task}/children') as f:
                        tree.extend(int(child) for child in f.read().split())
            except OSError:  # it ended meanwhile
                pass
        return tree
    children = {}
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                with open(f'/proc/{entry}/stat', 'rb') as f:
                    parent = int(f.read().rsplit(b')', 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    for p in tree:
        tree.extend(children.get(p, []))
    return tree


def pss_bytes(pid):
    try:
        with open(f'/proc/{pid}/smaps_rollup', 'rb') as f:
            for line in f:
                if line.startswith(b'Pss:'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def measured(name, command, cwd, env, log):
    """Runs command; returns (wall seconds, CPU seconds of all its processes, peak summed PSS of its
    processes, peak RSS of its largest one).
    Its output goes to log; a failure ends the benchmark with one line naming the log."""
    with open(log, 'w') as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        peak = 0
        while True:
            done, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if done:
                break
            peak = max(peak, sum(pss_bytes(p) for p in process_tree(proc.pid)))
            time.sleep(0.02)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise ScriptError(f"{name} exited with code {proc.returncode}; its output is in {log}")
    return wall, usage.ru_utime + usage.ru_stime, peak, usage.ru_maxrss * 1024


def upstream_shards(folder):
    """build-nanogpt's shards in its order (the number in the name: val first)."""
    return sorted(glob.glob(os.path.join(folder, 'edufineweb_*.npy')), key=lambda p: p.rsplit('_', 1)[1])


def check_inputs():
    if not build_nanogpt or not os.path.isfile(os.path.join(build_nanogpt, 'fineweb.py')):
        raise ScriptError(f"build_nanogpt={build_nanogpt!r} has no fineweb.py; clone "
                          f"https://github.com/karpathy/build-nanogpt and give --build_nanogpt=PATH")
    with open(os.path.join(build_nanogpt, 'fineweb.py'), encoding='utf-8') as f:
        code = f.read()
    for line in UPSTREAM_SETTINGS:
        if code.count(line) != 1:
            raise ScriptError(f"{build_nanogpt}/fineweb.py has no line '{line}' (another version?); this benchmark "
                              f"sets its worker count and shard size there")
    if not source:
        raise ScriptError("give --source=DIR, a folder of FineWeb-Edu .parquet files (or make one with --make_corpus=DIR)")
    kind, files = corpus_files(source)
    if kind != 'parquet':
        raise ScriptError(f"{source} holds .jsonl files; build-nanogpt's fineweb.py reads the hub's Parquet files")
    try:
        import datasets  # noqa: F401  (fineweb.py needs it, and prepare.py for --repo)
    except ImportError:
        raise ScriptError("build-nanogpt's fineweb.py needs the datasets package: pip install datasets")
    return code, files


if __name__ == '__main__':
    if make_corpus:
        write_corpus(make_corpus, corpus_mb)
        sys.exit(0)
    code, files = check_inputs()
    for name, new in UPSTREAM_SETTINGS.items():
        if shard_tokens != 100_000_000 or not name.startswith('shard_size'):
            code = code.replace(name, new)
    if os.path.isdir(work_dir):
        shutil.rmtree(work_dir)
    upstream_dir = os.path.join(work_dir, 'build-nanogpt')
    hub_copy = os.path.join(upstream_dir, 'HuggingFaceFW', 'fineweb-edu')
    os.makedirs(os.path.join(hub_copy, 'sample', '10BT'))
    for i, path in enumerate(files):  # the corpus's files in its order, under names that sort alike
        os.symlink(os.path.abspath(path), os.path.join(hub_copy, 'sample', '10BT', f'{i:05d}_{os.path.basename(path)}'))
    with open(os.path.join(hub_copy, 'README.md'), 'w') as f:
        f.write(HUB_README)
    with open(os.path.join(upstream_dir, 'fineweb.py'), 'w', encoding='utf-8') as f:
        f.write(code)
    env = dict(os.environ, HF_HOME=os.path.join(work_dir, 'hf'), HF_HUB_OFFLINE='1', HF_DATASETS_OFFLINE='1',
               PYTHONUNBUFFERED='1')
    ours = os.path.join(ROOT, 'data', 'fineweb_edu', 'prepare.py')
    runs = {  # name: (command, cwd, the folder its shards go to)
        "build-nanogpt fineweb.py": ([sys.executable, '-c', UPSTREAM_RUNNER], upstream_dir,
                                     os.path.join(upstream_dir, 'edu_fineweb10B')),
        "prepare.py --source (Parquet)": ([sys.executable, ours, f'--source={os.path.abspath(source)}',
                                          f'--dataset={os.path.join(work_dir, "source")}'], ROOT,
                                         os.path.join(work_dir, 'source')),
        "prepare.py --repo (datasets' cache)": ([sys.executable, ours, f'--repo={hub_copy}',
                                                f'--dataset={os.path.join(work_dir, "repo")}'], ROOT,
                                               os.path.join(work_dir, 'repo')),
    }
    for name, (command, _, _) in runs.items():
        if name.startswith('prepare.py'):
            command += [f'--num_proc={num_proc}', f'--shard_tokens={shard_tokens}']

    # datasets' Arrow cache of the corpus, as the first load_dataset call of either script makes it
    t0 = time.perf_counter()
    for i, path in enumerate(('HuggingFaceFW/fineweb-edu', hub_copy)):
        with open(os.path.join(work_dir, f'cache{i}.log'), 'w') as log:
            if subprocess.run([sys.executable, '-c', f"import datasets; datasets.load_dataset({path!r}, "
                                                     f"name='sample-10BT', split='train')"],
                              cwd=upstream_dir, env=env, stdout=log, stderr=subprocess.STDOUT).returncode:
                raise ScriptError(f"datasets could not load the corpus from {path}; its output is in {log.name}")
    cache_s = time.perf_counter() - t0

    results = {name: [] for name in runs}
    for r in range(rounds):
        for i, (name, (command, cwd, out)) in enumerate(runs.items()):
            if os.path.isdir(out):
                shutil.rmtree(out)
            results[name].append(measured(name, command, cwd, env, os.path.join(work_dir, f'round{r}_run{i}.log')))
            if name.startswith('build-nanogpt'):
                reference = [np.load(p, mmap_mode='r') for p in upstream_shards(out)]
            else:
                mine = [np.memmap(p, dtype=np.uint16, mode='r') for p in existing_shards(out)]
                if len(mine) != len(reference) or not all(np.array_equal(a, b) for a, b in zip(mine, reference)):
                    raise ScriptError(f"{name} wrote other tokens than build-nanogpt's fineweb.py; compare its "
                                      f"{len(mine)} shards in {out} with the {len(reference)} in "
                                      f"{runs['build-nanogpt fineweb.py'][2]}")
    tokens = sum(len(s) for s in reference)

    cpu = next((line.split(':', 1)[1].strip() for line in open('/proc/cpuinfo') if line.startswith('model name')),
               platform.processor()) if os.path.exists('/proc/cpuinfo') else platform.processor()
    size = sum(os.path.getsize(p) for p in files)
    print(f"corpus: {source}, {len(files)} Parquet files, {size / 1e6:,.0f} MB, {tokens:,} tokens")
    print(f"machine: {cpu}, {cores()} cores; Python {platform.python_version()}; num_proc={num_proc}, "
          f"shard_tokens={shard_tokens:,}, medians of {rounds} round(s)")
    print(f"datasets' Arrow cache of the corpus, made before the runs (fineweb.py's first run makes it): {cache_s:.1f}s")
    print("| run | wall time | tokens/s | CPU time | peak memory (PSS, all processes) | largest process (peak RSS) |")
    print("|---|---|---|---|---|---|")
    for name, rows in results.items():
        wall, cpu_s, pss, rss = (statistics.median(column) for column in zip(*rows))
        print(f"| {name} | {wall:.1f}s | {tokens / wall:,.0f} | {cpu_s:.1f}s | {pss / 2**20:,.0f} MiB | "
              f"{rss / 2**20:,.0f} MiB |")
    print(f"tokens: identical in every run ({len(reference)} shards)")
    if not keep:
        shutil.rmtree(work_dir)
