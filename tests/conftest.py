"""Shared fixtures: a throwaway copy of the project to run the real scripts in, the tiny Shakespeare
text the project ships, the GPT-2 BPE file (from ../shared/data, else the copy in tests/fixtures), and a
tiny model configuration."""

import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SHAKESPEARE_TXT = REPO / 'data' / 'shakespeare_char' / 'input.txt'  # shipped with the project
# tiktoken's GPT-2 BPE file, for the BPE tests: where the user points at one, else the shared data beside the
# project, else the copy the tests carry (tests/fixtures/README.md), so that they run from a plain clone offline
SHARED_GPT2_BPE = REPO.parent / 'shared' / 'data' / 'gpt2_bpe' / 'gpt2.tiktoken'
GPT2_BPE = Path(os.environ.get('NANOGPT_GPT2_BPE') or
                (SHARED_GPT2_BPE if SHARED_GPT2_BPE.exists() else REPO / 'tests' / 'fixtures' / 'gpt2.tiktoken'))

# a model small enough that a training iteration takes milliseconds on a CPU
TINY = ['--n_layer=2', '--n_head=2', '--n_embd=32', '--block_size=32', '--batch_size=4', '--dropout=0.0',
        '--device=cpu', '--compile=False', '--eval_iters=2', '--log_interval=1', '--warmup_iters=5']

ITER_LINE = re.compile(r'^iter (\d+): loss (\d+\.\d{4}), time (\d+\.\d{2})ms, mfu (\d+\.\d{2}%|n/a)$')
STEP_LINE = re.compile(r'^step (\d+): train loss (\d+\.\d{4}), val loss (\d+\.\d{4})(, .*)?$')


def upstream_lr(it, learning_rate, warmup_iters, lr_decay_iters, min_lr):
    """upstream nanoGPT's get_lr, written out here as a reference independent of train.py's: a linear
    warmup over warmup_iters steps, then a cosine from learning_rate down to min_lr at lr_decay_iters."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * decay_ratio)) * (learning_rate - min_lr)


def flops_per_token(n_layer, n_head, n_embd, block_size, vocab_size):
    """Training FLOPs per token of a GPT of this shape (bias=False), counted here from the shape as a
    reference independent of model.py: 6N + 12*L*H*Q*T (PaLM, appendix B), N the parameters without
    the position embeddings: the token embeddings (shared with lm_head), in each block two LayerNorm
    weights, attention's query/key/value and output projections (4 d^2) and the MLP's two d x 4d
    matrices (8 d^2), and the final LayerNorm."""
    d = n_embd
    n = vocab_size * d + n_layer * (2 * d + 4 * d * d + 8 * d * d) + d
    return 6 * n + 12 * n_layer * n_head * (d // n_head) * block_size


def expected_mfu(times_ms, flops_per_iter, peak):
    """The MFU (in %) that train.py prints at each of a process's first iterations, logged at every
    one with these printed times: None (n/a) for the first 5, then the first value, then 0.9 x the
    previous value + 0.1 x this iteration's, each iteration's being flops_per_iter / time / peak."""
    values, running = [], None
    for i, ms in enumerate(times_ms):
        if i >= 5:
            step = flops_per_iter / (ms / 1000) / peak * 100
            running = step if running is None else 0.9 * running + 0.1 * step
        values.append(running)
    return values


def assert_printed_mfu(iter_matches, flops_per_iter, peak):
    """The mfu field of ITER_LINE matches (every iteration of a process logged) against expected_mfu.
    The printed time has two decimals, so each value carries its rounding (under 0.5% for times of 1 ms
    and more) and the printed MFU two decimals."""
    times = [float(m.group(3)) for m in iter_matches]
    assert min(times) >= 1.0, times  # else the rounding of the printed time is too coarse for the check
    for m, want in zip(iter_matches, expected_mfu(times, flops_per_iter, peak)):
        if want is None:
            assert m.group(4) == 'n/a', m.group(0)
        else:
            assert m.group(4) != 'n/a' and abs(float(m.group(4)[:-1]) - want) <= 0.005 * want + 0.01, (m.group(0), want)


def script_env(**extra):
    env = dict(os.environ, WANDB_MODE='offline', PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1')
    if GPT2_BPE.exists():
        env.setdefault('NANOGPT_GPT2_BPE', str(GPT2_BPE))
    env.update(extra)
    return env


def copy_project(dest):
    """The project's scripts, helper package, configs, prepare and benchmark scripts and shipped text
    (no generated data) under dest."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for path in REPO.glob('*.py'):
        shutil.copy(path, dest / path.name)
    for folder in ('config', 'nanogpt'):
        shutil.copytree(REPO / folder, dest / folder, ignore=shutil.ignore_patterns('__pycache__'))
    for path in [*(REPO / 'data').rglob('*.py'), *(REPO / 'benchmarks').glob('*.py'), SHAKESPEARE_TXT]:
        target = dest / path.relative_to(REPO)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    return dest


def run_script(project, *args, env=None, check=True, timeout=600):
    """Runs python <args> in the project copy; returns the CompletedProcess (stdout and stderr as text)."""
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=project, env=env or script_env(),
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}")
    return proc


def torchrun(project, *args, check=True):
    """Runs python -m torch.distributed.run with 2 processes on the CPU (gloo) in the project copy."""
    proc = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                           *map(str, args)], cwd=project, env=script_env(), capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"torchrun {args} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def tiny(**kw):
    """A 2-layer GPT of 16 channels over 50 tokens, the same weights each time (seed 0); kw changes its GPTConfig."""
    import torch
    from model import GPT, GPTConfig
    args = dict(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=16, dropout=0.0, bias=False)
    args.update(kw)
    torch.manual_seed(0)
    return GPT(GPTConfig(**args))


def run_cases(cases, timeout=600):
    """Runs the real scripts for many cases at the cost of one torch import: tests/case_runner.py
    forks a process per case that runs `python script args...` as the interpreter would. cases are
    dicts with cwd, argv ([script, args...]) and optionally env (default script_env()), rlimits
    ({'RLIMIT_AS': bytes, ...}) and umask; returns a dict {rc, stdout, stderr} per case, in order."""
    with tempfile.TemporaryDirectory() as tmp:
        cases_file, results_file = os.path.join(tmp, 'cases.json'), os.path.join(tmp, 'results.json')
        with open(cases_file, 'w', encoding='utf-8') as f:
            json.dump([dict(c, cwd=str(c['cwd']), argv=[str(a) for a in c['argv']], env=c.get('env') or script_env())
                       for c in cases], f)
        proc = subprocess.run([sys.executable, str(REPO / 'tests' / 'case_runner.py'), cases_file, results_file],
                              env=script_env(), timeout=timeout, capture_output=True, text=True)
        assert proc.returncode == 0, f"case_runner.py failed:\n{proc.stderr[-3000:]}"
        with open(results_file, encoding='utf-8') as f:
            return json.load(f)


def iter_lines(stdout):
    return [ITER_LINE.match(line) for line in stdout.splitlines() if line.startswith('iter ')]


@pytest.fixture(scope='session')
def shakespeare_txt():
    return SHAKESPEARE_TXT


@pytest.fixture(scope='session')
def gpt2_bpe():
    if not GPT2_BPE.exists():
        pytest.skip(f"{GPT2_BPE} is not here")
    return GPT2_BPE


@pytest.fixture(scope='session')
def project(tmp_path_factory):
    """A copy of the project with data/shakespeare_char prepared by its own prepare.py."""
    dest = copy_project(tmp_path_factory.mktemp('project'))
    run_script(dest, 'data/shakespeare_char/prepare.py')
    return dest


# words of several scripts (Latin with accents, Cyrillic, Greek, CJK, emoji): the tokenizer tests' text
WORDS = ['the', 'quick', 'brown', 'fox', 'café', 'naïve', 'Straße', 'привет', 'мир', 'книга', 'Ελληνικά', 'λόγος',
         '你好', '世界', '学习', '日本語', '🙂', '🚀', '👍🏽', 'x²']


def multilingual_text(words, seed=0):
    """words words of WORDS with spaces, punctuation and line breaks between them, the same for a seed."""
    rng = random.Random(seed)
    return ''.join(rng.choice(WORDS) + rng.choice([' '] * 6 + [', ', '. ', '\n', '! ']) for _ in range(words))


def text_dataset(folder, text, tokenizer='char', vocab_size=None):
    """text as a dataset the way data/prepare.py makes one of a file (the first 90% of the characters to
    train on, the BPE trained on those only), written in this process: 'char', or 'bpe' of vocab_size."""
    from nanogpt.data import char_vocab, train_bpe, write_dataset
    split = int(len(text) * 0.9)
    files = None
    if tokenizer == 'char':
        stoi, itos = char_vocab(text)
        meta = {'vocab_size': len(stoi), 'itos': itos, 'stoi': stoi, 'tokenizer': 'char'}

        def encode(part):
            return [stoi[c] for c in part]
    else:
        bpe = train_bpe([text[:split]], vocab_size)
        assert bpe.get_vocab_size() == vocab_size  # the text fills it
        meta = {'vocab_size': vocab_size, 'tokenizer': 'bpe', 'tokenizer_file': 'tokenizer.json'}
        files = {'tokenizer.json': bpe.to_str().encode('utf-8')}

        def encode(part):
            return bpe.encode(part).ids
    return write_dataset(folder, encode(text[:split]), encode(text[split:]), meta, extra_files=files)
