"""Nothing runs that the user did not write, no run is lost or shared by accident, nothing is written
through a link, and every failure is one line: a table of bad inputs through the real scripts (hostile
and careless files, links planted where the toolkit writes), payloads in meta.pkl and checkpoints, two
runs into one out_dir, ranks given different settings, Ctrl-C, a full disk, datasets and exports
swapped in whole, and what a crash leaves for the next run."""

import base64
import fcntl
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from conftest import TINY, run_cases, run_script, script_env, torchrun
from nanogpt.data import load_meta, write_dataset
from nanogpt.files import read_metrics

TRAIN = ['train.py', 'config/train_shakespeare_char.py', *TINY]
BENCH = ['bench.py', '--device=cpu', '--compile=False', '--n_layer=2', '--n_head=2', '--n_embd=32', '--block_size=32',
         '--batch_size=4', '--dataset=shakespeare_char', '--burnin=1', '--num_steps=2']
SAMPLE = ['sample.py', '--device=cpu', '--num_samples=1', '--max_new_tokens=5']
EVALUATE = ['benchmarks/evaluate.py', '--device=cpu']
# a case's options: rlimits (resource limits), env (added to script_env's), rc (the exit code expected)
NO_BIG_ALLOCATION = {'rlimits': {'RLIMIT_AS': 8 << 30}}  # a shape refused by the memory check must not try to allocate first
CTRL_C = {'rc': 130}
# GPT-2's BPE cannot be downloaded (a proxy that refuses, no tiktoken cache): the file NANOGPT_GPT2_BPE names is read
OFFLINE = {'HTTPS_PROXY': 'http://127.0.0.1:9', 'HTTP_PROXY': 'http://127.0.0.1:9', 'NO_PROXY': '',
           'TIKTOKEN_CACHE_DIR': '{base}/no_tiktoken_cache'}
NO_WANDB_KEY = {'HOME': '{base}/home', 'WANDB_MODE': '', 'WANDB_API_KEY': '', 'WANDB_CONFIG_DIR': '{base}/home',
                'WANDB_DIR': '{base}/home'}
DROP = object()  # checkpoint_variant: the entry removed


class Payload:
    """Unpickled, it would create the folder marker: the proof that a file ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def checkpoint_variant(source, folder, **changes):
    """A copy of the checkpoint at source in folder/ckpt.pt, with entries replaced (a dict merges, DROP removes)."""
    ckpt = torch.load(source, map_location='cpu', weights_only=True)
    for key, value in changes.items():
        if value is DROP:
            del ckpt[key]
        else:
            ckpt[key] = dict(ckpt[key], **value) if isinstance(value, dict) and isinstance(ckpt.get(key), dict) else value
    folder.mkdir()
    torch.save(ckpt, folder / 'ckpt.pt')


def shared_lists(levels):
    """A list that holds one list twice, which holds one list twice, ... levels deep: a pickle of a few
    hundred bytes (each list is written once), 2**levels lists when walked."""
    value = []
    for _ in range(levels):
        value = [value, value]
    return value


def tuple_key_pickle(levels):
    """The pickle of {key: 1}, key a tuple that holds one tuple twice, ... levels deep: unpickling hashes
    the key, which walks all 2**levels tuples. (Made from its opcodes: the dict itself could not be built.)"""
    key = ()
    for _ in range(levels):
        key = (key, key)
    return b'\x80\x02}q\xff' + pickle.dumps(key, protocol=2)[2:-1] + b'K\x01s.'


def tiktoken_file(path, ranks):
    """A well-formed tiktoken BPE file of these ranks ({token bytes: rank})."""
    path.write_bytes(b''.join(base64.b64encode(token) + b' %d\n' % rank for token, rank in ranks.items()))


@pytest.fixture(scope='module')
def bad(project, tmp_path_factory):
    """A tiny model trained 10 iterations (its checkpoint and export), and odd files to feed the scripts."""
    base = tmp_path_factory.mktemp('bad')
    out = base / 'out'
    run_script(project, *TRAIN, f'--out_dir={out}', '--max_iters=10', '--eval_interval=10')
    run_script(project, 'export_hf.py', f'--out_dir={out}', f'--export_dir={base}/hf65')
    marker = base / 'MARKER'
    chars = project / 'data' / 'shakespeare_char'

    # datasets
    write_dataset(base / 'short', list(range(60)) * 2, list(range(20)), {'vocab_size': 65})  # val: 20 tokens
    write_dataset(base / 'big_ids', list(range(300)), list(range(300)), {'vocab_size': 65})  # ids up to 299
    write_dataset(base / 'vocab80', list(range(80)) * 3, list(range(80)) * 3, {'vocab_size': 80})
    write_dataset(base / 'existing_ds', list(range(50)) * 2, list(range(50)), {'vocab_size': 50})
    (base / 'no_val').mkdir()
    (base / 'no_val' / 'train.bin').write_bytes(bytes(400))
    for name, meta in (('evil', {'vocab_size': 65, 'x': Payload(marker)}), ('meta_list', [65]),
                       ('meta_vocab', {'vocab_size': 'abc'}), ('meta_dtype', {'vocab_size': 65, 'dtype': 'float64'}),
                       ('odd_bin', {'vocab_size': 65})):
        (base / name).mkdir()
        for split in ('train.bin', 'val.bin'):
            shutil.copy(chars / split, base / name / split)
        (base / name / 'meta.pkl').write_bytes(pickle.dumps(meta))
    (base / 'odd_bin' / 'train.bin').write_bytes(bytes(401))
    (base / 'meta_garbage').mkdir()
    (base / 'meta_garbage' / 'meta.pkl').write_bytes(b'\x80\x04garbage, not a pickle')

    # checkpoints
    (base / 'truncated').mkdir()
    data = (out / 'ckpt.pt').read_bytes()
    (base / 'truncated' / 'ckpt.pt').write_bytes(data[:len(data) // 3])
    (base / 'ckpt_payload').mkdir()
    torch.save({'model': {}, 'model_args': {}, 'x': Payload(marker)}, base / 'ckpt_payload' / 'ckpt.pt')
    (base / 'ckpt_foreign').mkdir()
    torch.save({'weights': torch.ones(3)}, base / 'ckpt_foreign' / 'ckpt.pt')
    checkpoint_variant(out / 'ckpt.pt', base / 'ckpt_badargs', model_args={'n_layer': 'x'})
    checkpoint_variant(out / 'ckpt.pt', base / 'ckpt_mismatch', model_args={'n_embd': 64})
    checkpoint_variant(out / 'ckpt.pt', base / 'ckpt_vocab80', config={'dataset': str(base / 'vocab80')})
    checkpoint_variant(out / 'ckpt.pt', base / 'ckpt_evilmeta', config={'dataset': str(base / 'evil')})
    checkpoint_variant(out / 'ckpt.pt', base / 'ckpt_nostoi', config={'dataset': str(base / 'short')})
    (base / 'empty_out').mkdir()
    (base / 'hfdir_bpe').mkdir()  # a GPT-2 sized vocabulary: planned from config.json, refused before the weights
    (base / 'hfdir_bpe' / 'config.json').write_text(json.dumps(
        dict(n_layer=2, n_head=2, n_embd=16, n_positions=64, vocab_size=50257)))
    (base / 'hfdir_bpe' / 'model.safetensors').write_bytes(b'')

    # config files, prompts, texts, metrics
    (base / 'raises.py').write_text("batch_size = 4\nraise RuntimeError('nope')\n")
    (base / 'typo.py').write_text("batch_size = 4\nlearnig_rate = 1e-3\n")
    (base / 'binary.py').write_bytes(b'\xff\xfe\x00bad')
    (base / 'nul.py').write_bytes(b'batch_size = 4\n\x00\x1b[31mred\n')
    (base / 'multiline.py').write_text("raise ValueError('first line\\nsecond line')\n")
    (base / 'nan.py').write_text("learning_rate = float('nan')\n")
    (base / 'afile').write_text('a file, not a folder\n')
    (base / 'prompt.bin').write_bytes(b'\xff\x00\x1b[2J')
    (base / 'empty.txt').write_text('')
    (base / 'tiny.txt').write_text('ab')
    (base / 'latin1.txt').write_bytes(b'caf\xe9\n' * 20)
    (base / 'ok.txt').write_text('plenty of text to split\n' * 10)
    (base / 'metrics_garbage').mkdir()
    (base / 'metrics_garbage' / 'metrics.jsonl').write_text('not json\n[1, 2]\n{"loss": 1.0}\n{"iter": "x"}\n')
    (base / 'metrics_empty').mkdir()
    (base / 'metrics_empty' / 'metrics.jsonl').write_text('')
    (base / 'busy').mkdir()

    # hostile and careless files (issue 25): structures that unfold without end, numbers too large to print
    for name, meta in (('meta_shared_lists', {'vocab_size': shared_lists(60)}), ('meta_huge_int', {'vocab_size': 10**400})):
        (base / name).mkdir()
        (base / name / 'meta.pkl').write_bytes(pickle.dumps(meta))
    (base / 'meta_deep').mkdir()
    (base / 'meta_deep' / 'meta.pkl').write_bytes(b'\x80\x02' + b']' * 5000 + b'a' * 4999 + b'.')  # lists 5000 deep
    (base / 'meta_tuple_key').mkdir()
    (base / 'meta_tuple_key' / 'meta.pkl').write_bytes(tuple_key_pickle(60))
    nan_weight = torch.load(out / 'ckpt.pt', map_location='cpu', weights_only=True)['model']['lm_head.weight'] * float('nan')
    checkpoint_variant(out / 'ckpt.pt', base / 'ckpt_nan', model={'lm_head.weight': nan_weight})
    checkpoint_variant(out / 'ckpt.pt', base / 'ckpt_iter_str', iter_num='abc')
    checkpoint_variant(out / 'ckpt.pt', base / 'ckpt_no_iter', iter_num=DROP)
    checkpoint_variant(out / 'ckpt.pt', base / 'ckpt_optim_str', optimizer='Adam')
    checkpoint_variant(out / 'ckpt.pt', base / 'ckpt_optim_foreign', optimizer={'state': 'none'})
    checkpoint_variant(out / 'ckpt.pt', base / 'ckpt_config_str', config='shakespeare_char')
    checkpoint_variant(out / 'ckpt.pt', base / 'ckpt_best_nan', best_val_loss=float('nan'))
    checkpoint_variant(out / 'ckpt.pt', base / 'ckpt_huge_args', model_args={'n_layer': 10**400})
    checkpoint_variant(out / 'ckpt.pt', base / 'ckpt_shared_lists', config={'optimizer': shared_lists(60)})
    tiktoken_file(base / 'other_bpe.tiktoken', {bytes([i]): i for i in range(256)} | {b'th': 256, b'he': 257})
    (base / 'no_tiktoken_cache').mkdir()
    (base / 'home').mkdir()
    (base / 'ctrl_c.py').write_text("import os, signal\nos.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while starting\n")
    for name, config_json in (('hfdir_deep', '[' * 100_000 + ']' * 100_000),
                              ('hfdir_huge', json.dumps(dict(n_layer=10**400, n_head=2, n_embd=16, n_positions=64,
                                                             vocab_size=65)))):
        (base / name).mkdir()
        (base / name / 'config.json').write_text(config_json)
        (base / name / 'model.safetensors').write_bytes(b'')
    (base / 'deep.jsonl').write_text('[' * 100_000 + ']' * 100_000 + '\n')
    (base / 'metrics_huge_iter').mkdir()
    (base / 'metrics_huge_iter' / 'metrics.jsonl').write_text('{"iter": 1%s, "loss": 1.0}\n' % ('0' * 400))
    # links planted at the names of files the toolkit writes, leading to a file that is not the toolkit's
    victim = base / 'victim.txt'
    victim.write_text('not a file of this toolkit\n')
    for folder, name in (('link_lock', 'run.lock'), ('link_tmp', 'ckpt.pt.tmp'), ('link_metrics', 'metrics.jsonl'),
                         ('link_ds', 'train.bin'), ('link_export', 'config.json')):
        (base / folder).mkdir()
        (base / folder / name).symlink_to(victim if folder != 'link_export' else base / 'nowhere.json')
    shutil.copytree(out, base / 'link_tmp_resume')
    (base / 'link_tmp_resume' / 'ckpt.pt.tmp').symlink_to(victim)
    (base / 'link_ckpt').mkdir()
    (base / 'link_ckpt' / 'ckpt.pt').symlink_to(base / 'out' / 'ckpt.pt')
    (base / 'hardlink_metrics').mkdir()
    os.link(victim, base / 'hardlink_metrics' / 'metrics.jsonl')
    (base / 'link.png').symlink_to(victim)
    return base


# (script and its fixed arguments, case, arguments, text expected in the error line (or in the one warning line of a
# case that goes on, as it may), options: see NO_BIG_ALLOCATION)
BAD_INPUTS = [
    # --- train.py: configuration
    (TRAIN, 'unknown key on the command line', ['--batchsize=4'], "unknown config key 'batchsize'", None),
    (TRAIN, 'unknown key in a config file', ['{base}/typo.py'], "unknown config key 'learnig_rate'", None),
    (TRAIN, 'value of the wrong type', ['--max_iters=lots'], "max_iters expects int", None),
    (TRAIN, 'missing config file', ['{base}/nope.py'], "config file {base}/nope.py not found", None),
    (TRAIN, 'undecodable config file', ['{base}/binary.py'], "cannot read config file", None),
    (TRAIN, 'config file with NUL and escape bytes', ['{base}/nul.py'], "nul.py failed", None),
    (TRAIN, 'config file that raises', ['{base}/raises.py'], "raises.py failed at line 2: RuntimeError: nope", None),
    (TRAIN, 'config file raising a two-line message', ['{base}/multiline.py'], "ValueError: first line second line", None),
    (TRAIN, 'n_embd not divisible by n_head', ['--n_embd=30', '--n_head=4'], "n_embd=30 is not divisible by n_head=4", None),
    (TRAIN, 'zero batch_size', ['--batch_size=0'], "batch_size must be a positive integer", None),
    (TRAIN, 'negative block_size', ['--block_size=-8'], "block_size must be a positive integer", None),
    (TRAIN, 'zero n_layer', ['--n_layer=0'], "n_layer must be a positive integer", None),
    (TRAIN, 'negative max_iters', ['--max_iters=-1'], "max_iters must be a positive integer", None),
    (TRAIN, 'zero eval_iters', ['--eval_iters=0'], "eval_iters must be a positive integer", None),
    (TRAIN, 'zero eval_interval', ['--eval_interval=0'], "eval_interval must be a positive integer", None),
    (TRAIN, 'zero gradient_accumulation_steps', ['--gradient_accumulation_steps=0'],
     "gradient_accumulation_steps must be a positive integer", None),
    (TRAIN, 'unknown device', ['--device=tpu'], "unknown device 'tpu'", None),
    (TRAIN, 'unknown dtype', ['--dtype=float8'], "unknown dtype 'float8'", None),
    (TRAIN, 'dtype the device cannot do', ['--dtype=float16'], "float16 training needs a GPU", None),
    (TRAIN, 'init_from nonsense', ['--init_from=scratchy'], "init_from='scratchy'", None),
    (TRAIN, 'unknown compile_mode', ['--compile_mode=fast'], "compile_mode must be 'default', 'reduce-overhead', "
     "'max-autotune' or 'max-autotune-no-cudagraphs', got 'fast'", None),
    (TRAIN, 'unknown optimizer', ['--optimizer=sgd'], "optimizer must be 'adamw' or 'muon', got 'sgd'", None),
    (TRAIN, 'unknown mlp_activation', ['--mlp_activation=swish'], "mlp_activation must be 'gelu' or 'relu2', got 'swish'",
     None),
    (TRAIN, 'negative logit_softcap', ['--logit_softcap=-1'], "logit_softcap must be 0 (off) or a finite number above 0",
     None),
    (TRAIN, 'negative cooldown_iters', ['--cooldown_iters=-5'], "cooldown_iters must be 0 (the cosine) or more", None),
    (TRAIN, 'Muon momentum of 1', ['--optimizer=muon', '--muon_momentum=1.0'], "muon_momentum must be in [0, 1)", None),
    (TRAIN, 'GPT-2 with rotary embeddings', ['--init_from=gpt2', '--rope=True'],
     "init_from=gpt2 loads GPT-2's architecture, which has no rope=True", None),
    (TRAIN, 'unknown sdpa_backend', ['--sdpa_backend=fastest'], "unknown sdpa_backend 'fastest'", None),
    (TRAIN, 'attention kernel the device has not', ['--sdpa_backend=cudnn'], "sdpa_backend=cudnn is a CUDA kernel", None),
    (TRAIN, 'fsdp without torchrun', ['--fsdp=True'], "fsdp=True shards across processes", None),
    # --- train.py: optimizer values and the seed
    (TRAIN, 'zero learning_rate', ['--learning_rate=0'], "learning_rate must be a finite number above 0, got 0.0", None),
    (TRAIN, 'infinite learning_rate', ['--learning_rate=1e999'], "learning_rate must be a finite number above 0, got inf",
     None),
    (TRAIN, 'NaN learning_rate', ['{base}/nan.py'], "learning_rate must be a finite number above 0, got nan", None),
    (TRAIN, 'negative min_lr', ['--min_lr=-1e-4'], "min_lr must be a finite number, 0 or more", None),
    (TRAIN, 'min_lr above learning_rate', ['--min_lr=0.1'], "min_lr=0.1 is above learning_rate=0.001", None),
    (TRAIN, 'beta1 below 0', ['--beta1=-0.1'], "beta1 must be in [0, 1)", None),
    (TRAIN, 'beta2 of 1', ['--beta2=1.0'], "beta2 must be in [0, 1)", None),
    (TRAIN, 'negative weight_decay', ['--weight_decay=-1'], "weight_decay must be a finite number, 0 or more", None),
    (TRAIN, 'negative grad_clip', ['--grad_clip=-1'], "grad_clip must be a finite number, 0 or more", None),
    (TRAIN, 'negative warmup_iters', ['--warmup_iters=-5'], "warmup_iters must be 0 or more", None),
    (TRAIN, 'negative lr_decay_iters', ['--lr_decay_iters=-1'], "lr_decay_iters must be 0 or more", None),
    (TRAIN, 'dropout of 1', ['--dropout=1.0'], "dropout must be in [0, 1)", None),
    (TRAIN, 'negative seed', ['--seed=-1'], "seed must be an integer from 0 to 2**64 - 1", None),
    (TRAIN, 'seed beyond 64 bits', ['--seed=18446744073709551616'], "seed must be an integer from 0 to 2**64 - 1", None),
    (TRAIN, 'negative peak_flops', ['--peak_flops=-1'], "peak_flops must be 0", None),
    # --- train.py: shapes that cannot fit, refused before anything is allocated
    (TRAIN, 'ten thousand layers', ['--n_layer=10000', '--n_embd=768', '--n_head=12'], "GiB of this machine",
     NO_BIG_ALLOCATION),
    (TRAIN, 'a million channels', ['--n_embd=1000000'], "GiB of this machine", NO_BIG_ALLOCATION),
    (TRAIN, 'a billion sequences', ['--batch_size=1000000000'], "GiB of this machine", NO_BIG_ALLOCATION),
    (TRAIN, 'block_size beyond the data', ['--block_size=1000000000'], "needs more than block_size=1000000000",
     NO_BIG_ALLOCATION),
    # --- train.py: data
    (TRAIN, 'missing dataset folder', ['--dataset=shakespeare'], "run python data/shakespeare/prepare.py first", None),
    (TRAIN, 'missing .bin file', ['--dataset={base}/no_val'], "val.bin does not exist", None),
    (TRAIN, 'split not longer than block_size', ['--dataset={base}/short', '--block_size=32'],
     "needs more than block_size=32", None),
    (TRAIN, 'token ids not below vocab_size', ['--dataset={base}/big_ids'],
     "token id 299, not below the model's vocab_size 65", None),
    (TRAIN, 'meta.pkl not a dict', ['--dataset={base}/meta_list'], "meta.pkl holds a list, not a dict", None),
    (TRAIN, 'meta.pkl not a pickle', ['--dataset={base}/meta_garbage'], "cannot read {base}/meta_garbage/meta.pkl", None),
    (TRAIN, 'meta.pkl vocab_size not a number', ['--dataset={base}/meta_vocab'], "says vocab_size='abc'", None),
    (TRAIN, 'meta.pkl token dtype unknown', ['--dataset={base}/meta_dtype'], "names token dtype 'float64'", None),
    (TRAIN, 'token file of an odd byte count', ['--dataset={base}/odd_bin'], "not a whole number of uint16 tokens", None),
    (TRAIN, 'GPT-2 on character data', ['--init_from={base}/hfdir_bpe', '--block_size=32'],
     "the model's vocabulary (50257 tokens) is not that of dataset shakespeare_char (65 characters)", None),
    # --- train.py: checkpoints and out_dir
    (TRAIN, 'resume without a checkpoint', ['--init_from=resume', '--out_dir={base}/empty_out'],
     "no checkpoint at {base}/empty_out/ckpt.pt; train one first, or start with --init_from=scratch", None),
    (TRAIN, 'truncated checkpoint', ['--init_from=resume', '--out_dir={base}/truncated'], "truncated or corrupt", None),
    (TRAIN, 'checkpoint of other objects', ['--init_from=resume', '--out_dir={base}/ckpt_foreign'],
     "is not a nanoGPT checkpoint", None),
    (TRAIN, 'checkpoint with a nonsense shape', ['--init_from=resume', '--out_dir={base}/ckpt_badargs'],
     "model_args have no sensible n_layer", None),
    (TRAIN, 'checkpoint weights not of its shape', ['--init_from=resume', '--out_dir={base}/ckpt_mismatch'],
     "does not match its own model_args: Error(s) in loading state_dict for GPT: size mismatch for", None),
    (TRAIN, 'resume with a larger block_size', ['--init_from=resume', '--out_dir={base}/out', '--block_size=64'],
     "block_size=64 is larger than the checkpoint's 32", None),
    (TRAIN, 'resume with a smaller block_size', ['--init_from=resume', '--out_dir={base}/out', '--block_size=16'],
     "block_size=16 is smaller than the checkpoint's 32", None),
    (TRAIN, 'resume on data of another vocabulary', ['--init_from=resume', '--out_dir={base}/out',
                                                    '--dataset={base}/vocab80'],
     "the model's vocabulary (65 tokens) is not that of dataset {base}/vocab80 (80 tokens); resume with the dataset "
     "it was trained on (shakespeare_char)", None),
    (TRAIN, 'a new run into an out_dir that holds one', ['--out_dir={base}/out'],
     "{base}/out already holds a run (ckpt.pt and metrics.jsonl); continue it with --init_from=resume", None),
    (TRAIN, 'an out_dir in use', ['--out_dir={base}/busy'], "{base}/busy is in use by another training run (pid ", None),
    (TRAIN, 'out_dir that is a file', ['--out_dir={base}/afile'], "cannot create out_dir {base}/afile", None),
    (TRAIN, 'out_dir under a file', ['--out_dir={base}/afile/out'], "cannot create out_dir {base}/afile/out", None),
    # --- sample.py
    (SAMPLE, 'temperature beyond 100', ['--out_dir={base}/out', '--temperature=1000'], "temperature must be from 0", None),
    (SAMPLE, 'negative temperature', ['--out_dir={base}/out', '--temperature=-1'], "temperature must be from 0", None),
    (SAMPLE, 'infinite temperature', ['--out_dir={base}/out', '--temperature=1e999'], "got inf", None),
    (SAMPLE, 'top_k of 0', ['--out_dir={base}/out', '--top_k=0'], "top_k must be a positive integer", None),
    (SAMPLE, 'negative top_k', ['--out_dir={base}/out', '--top_k=-5'], "top_k must be a positive integer", None),
    (SAMPLE, 'top_p of 0', ['--out_dir={base}/out', '--top_p=0'], "top_p must be in (0, 1]", None),
    (SAMPLE, 'top_p above 1', ['--out_dir={base}/out', '--top_p=1.5'], "top_p must be in (0, 1]", None),
    (SAMPLE, 'a billion new tokens', ['--out_dir={base}/out', '--max_new_tokens=1000000000'],
     "max_new_tokens must be from 0 to 1,000,000", None),
    (SAMPLE, 'negative max_new_tokens', ['--out_dir={base}/out', '--max_new_tokens=-1'], "max_new_tokens must be", None),
    (SAMPLE, 'negative seed', ['--out_dir={base}/out', '--seed=-1'], "seed must be an integer", None),
    (SAMPLE, 'zero num_samples', ['--out_dir={base}/out', '--num_samples=0'], "num_samples must be a positive integer",
     None),
    (SAMPLE, 'no checkpoint', ['--out_dir={base}/empty_out'],
     "no checkpoint at {base}/empty_out/ckpt.pt; train one first, or point --out_dir at the folder that holds one", None),
    (SAMPLE, 'truncated checkpoint', ['--out_dir={base}/truncated'], "truncated or corrupt", None),
    (SAMPLE, 'characters not in the vocabulary', ['--out_dir={base}/out', '--start=Привет'],
     "characters that are not in the vocabulary of dataset shakespeare_char: 'П'", None),
    (SAMPLE, 'missing prompt file', ['--out_dir={base}/out', '--start=FILE:{base}/nope.txt'],
     "cannot read the prompt file {base}/nope.txt", None),
    (SAMPLE, 'binary prompt file', ['--out_dir={base}/out', '--start=FILE:{base}/prompt.bin'],
     "cannot read the prompt file {base}/prompt.bin: 'utf-8' codec can't decode byte 0xff", None),
    (SAMPLE, 'control characters in the prompt', ['--out_dir={base}/out', '--start=ab\x1b[2Jc'],
     "not in the vocabulary of dataset shakespeare_char: '\\x1b'", None),
    (SAMPLE, 'empty prompt', ['--out_dir={base}/out', '--start='], "the prompt is empty", None),
    (SAMPLE, 'a dataset of another vocabulary', ['--out_dir={base}/ckpt_vocab80'],
     "the model's vocabulary (65 tokens) is not that of dataset {base}/vocab80 (80 tokens)", None),
    (SAMPLE, 'a dataset without a tokenizer', ['--out_dir={base}/ckpt_nostoi'], "has no tokenizer this toolkit knows",
     None),
    (SAMPLE, 'a character model exported, read as GPT-2', ['--init_from={base}/hf65'],
     "the model's vocabulary (65 tokens) is not that of GPT-2's tokenizer", None),
    (SAMPLE, 'init_from nonsense', ['--init_from=scratch'], "init_from='scratch': use 'resume', a GPT-2 name", None),
    (SAMPLE, 'unknown device', ['--out_dir={base}/out', '--device=gpu'], "unknown device 'gpu'", None),
    # --- bench.py
    (BENCH, 'ten thousand layers', ['--n_layer=10000', '--n_embd=768', '--n_head=12'], "GiB of this machine",
     NO_BIG_ALLOCATION),
    (BENCH, 'a million channels', ['--n_embd=1000000', '--real_data=False', '--batch_size=1', '--block_size=8'],
     "GiB of this machine", NO_BIG_ALLOCATION),
    (BENCH, 'n_embd not divisible by n_head', ['--n_embd=30', '--n_head=4'], "n_embd=30 is not divisible by n_head=4",
     None),
    (BENCH, 'missing dataset', ['--dataset=shakespeare'], "run python data/shakespeare/prepare.py first", None),
    (BENCH, 'negative grad_clip', ['--grad_clip=-1'], "grad_clip must be a finite number", None),
    (BENCH, 'seed beyond 64 bits', ['--seed=18446744073709551616'], "seed must be an integer", None),
    (BENCH, 'zero num_steps', ['--num_steps=0'], "num_steps must be a positive integer", None),
    (BENCH, 'negative burnin', ['--burnin=-1'], "burnin must be 0 or more", None),
    (BENCH, 'dropout of 1', ['--dropout=1'], "dropout must be in [0, 1)", None),
    # --- export_hf.py
    (['export_hf.py'], 'an export that is there already', ['--out_dir={base}/out', '--export_dir={base}/hf65'],
     "{base}/hf65 already holds an export (config.json and model.safetensors)", None),
    (['export_hf.py'], 'no checkpoint', ['--out_dir={base}/empty_out'],
     "no checkpoint at {base}/empty_out/ckpt.pt; train one first, or point --out_dir at the folder that holds one", None),
    (['export_hf.py'], 'truncated checkpoint', ['--out_dir={base}/truncated'], "truncated or corrupt", None),
    (['export_hf.py'], 'checkpoint weights not of its shape', ['--out_dir={base}/ckpt_mismatch'], "size mismatch for",
     None),
    (['export_hf.py'], 'export_dir under a file', ['--out_dir={base}/out', '--export_dir={base}/afile/hf'],
     "cannot create {base}/afile/hf", None),
    # --- plot.py
    (['plot.py'], 'no metrics', ['--out_dir={base}/empty_out'], "no metrics at {base}/empty_out/metrics.jsonl", None),
    (['plot.py'], 'empty metrics', ['--out_dir={base}/metrics_empty'], "has no rows yet", None),
    (['plot.py'], 'metrics without a row', ['--out_dir={base}/metrics_garbage'], "has no rows yet", None),
    (['plot.py'], 'a picture format matplotlib lacks', ['--out_dir={base}/out', '--output={base}/loss.xyz'],
     "cannot write {base}/loss.xyz: Format 'xyz' is not supported", None),
    (['plot.py'], 'a picture in a missing folder', ['--out_dir={base}/out', '--output={base}/nowhere/loss.png'],
     "cannot write {base}/nowhere/loss.png: No such file or directory; nothing was written", None),
    # --- data/prepare.py
    (['data/prepare.py'], 'empty text', ['--input={base}/empty.txt', '--dataset={base}/new_ds'],
     "too small to split: train gets 0 tokens and val 0", None),
    (['data/prepare.py'], 'too small over an existing dataset', ['--input={base}/tiny.txt', '--dataset={base}/existing_ds'],
     "too small to split: train gets 1 tokens and val 1", None),
    (['data/prepare.py'], 'not UTF-8', ['--input={base}/latin1.txt', '--dataset={base}/new_ds'],
     "latin1.txt is not valid UTF-8 (byte 0xe9 at offset 3)", None),
    (['data/prepare.py'], 'val_fraction of 0', ['--input={base}/ok.txt', '--dataset={base}/new_ds', '--val_fraction=0'],
     "val_fraction must be between 0 and 1", None),
    (['data/prepare.py'], 'infinite val_fraction', ['--input={base}/ok.txt', '--dataset={base}/new_ds',
                                                     '--val_fraction=1e999'], "val_fraction must be between 0 and 1", None),
    (['data/prepare.py'], 'dataset folder under a file', ['--input={base}/ok.txt', '--dataset={base}/afile/ds'],
     "cannot create {base}/afile/ds", None),
    # --- data/shakespeare_char/prepare.py and data/shakespeare/prepare.py (over the prepared dataset)
    (['data/shakespeare_char/prepare.py'], 'empty text', ['{base}/empty.txt'],
     "{base}/empty.txt is too small to split: train gets 0 tokens and val 0", None),
    (['data/shakespeare_char/prepare.py'], 'missing text', ['{base}/nope.txt'], "cannot read {base}/nope.txt", None),
    (['data/shakespeare_char/prepare.py'], 'not UTF-8', ['{base}/latin1.txt'],
     "cannot read {base}/latin1.txt: 'utf-8' codec can't decode byte 0xe9", None),
    (['data/shakespeare/prepare.py'], 'missing text', ['{base}/nope.txt'], "cannot read {base}/nope.txt", None),
    (['data/shakespeare/prepare.py'], 'not UTF-8', ['{base}/latin1.txt'], "cannot read {base}/latin1.txt", None),

    # --- issue 25: files written through links planted at their names (the file they lead to stays as it is)
    (TRAIN, 'run.lock a link', ['--out_dir={base}/link_lock'], "{base}/link_lock/run.lock is a symbolic link (to "
     "{base}/victim.txt), and this toolkit does not write through links", None),
    (TRAIN, 'ckpt.pt.tmp a link', ['--out_dir={base}/link_tmp'], "{base}/link_tmp/ckpt.pt.tmp is a symbolic link", None),
    (TRAIN, 'ckpt.pt.tmp a link, evaluating only', ['--out_dir={base}/link_tmp_resume', '--init_from=resume',
                                                   '--eval_only=True'],
     "{base}/link_tmp_resume/ckpt.pt.tmp is a symbolic link", None),
    (TRAIN, 'ckpt.pt a link, resumed', ['--out_dir={base}/link_ckpt', '--init_from=resume'],
     "{base}/link_ckpt/ckpt.pt is a symbolic link (to {base}/out/ckpt.pt)", None),
    (TRAIN, 'metrics.jsonl a link', ['--out_dir={base}/link_metrics'], "{base}/link_metrics/metrics.jsonl is a symbolic link",
     None),
    (TRAIN, 'metrics.jsonl a hard link', ['--out_dir={base}/hardlink_metrics'],
     "{base}/hardlink_metrics/metrics.jsonl is one of 2 names of the same file (a hard link)", None),
    (['data/prepare.py'], 'train.bin a link', ['--input={base}/ok.txt', '--dataset={base}/link_ds'],
     "{base}/link_ds/train.bin is a symbolic link", None),
    (['export_hf.py'], 'config.json a dangling link', ['--out_dir={base}/out', '--export_dir={base}/link_export'],
     "{base}/link_export/config.json is a symbolic link (to {base}/nowhere.json)", None),
    (['plot.py'], 'the picture a link', ['--out_dir={base}/out', '--output={base}/link.png'],
     "{base}/link.png is a symbolic link", None),
    # --- issue 25: files that only look like data; reading, checking and describing them is bounded
    (TRAIN, 'meta.pkl of lists shared level upon level', ['--dataset={base}/meta_shared_lists'],
     "{base}/meta_shared_lists/meta.pkl is not a dataset's meta.pkl (it unfolds into more than 16,777,216 values", None),
    (BENCH, 'meta.pkl of lists shared level upon level', ['--dataset={base}/meta_shared_lists'],
     "meta_shared_lists/meta.pkl is not a dataset's meta.pkl (it unfolds into more than", None),
    (TRAIN, 'meta.pkl with a key of tuples shared level upon level', ['--dataset={base}/meta_tuple_key'],
     "meta_tuple_key/meta.pkl is not a dataset's meta.pkl (it unfolds into more than", None),
    (TRAIN, 'meta.pkl nested 5000 deep', ['--dataset={base}/meta_deep'],
     "meta_deep/meta.pkl is not a dataset's meta.pkl (it nests values more than 100 deep)", None),
    (TRAIN, 'meta.pkl vocab_size of 400 digits', ['--dataset={base}/meta_huge_int'],
     "says vocab_size=<an integer of 1,329 bits>, not a positive int", None),
    (TRAIN, 'checkpoint config of lists shared level upon level', ['--init_from=resume', '--out_dir={base}/ckpt_shared_lists'],
     "{base}/ckpt_shared_lists/ckpt.pt is not a nanoGPT checkpoint (it unfolds into more than", None),
    (SAMPLE, 'checkpoint config of lists shared level upon level', ['--out_dir={base}/ckpt_shared_lists'],
     "ckpt_shared_lists/ckpt.pt is not a nanoGPT checkpoint (it unfolds into more than", None),
    (TRAIN, 'checkpoint iter_num a string', ['--init_from=resume', '--out_dir={base}/ckpt_iter_str'],
     "{base}/ckpt_iter_str/ckpt.pt cannot be used: its iter_num is 'abc', not an integer from 0", None),
    (TRAIN, 'checkpoint without iter_num', ['--init_from=resume', '--out_dir={base}/ckpt_no_iter'],
     "{base}/ckpt_no_iter/ckpt.pt lacks iter_num, which a resume needs", None),
    (TRAIN, 'checkpoint optimizer a string', ['--init_from=resume', '--out_dir={base}/ckpt_optim_str'],
     "its optimizer is 'Adam', not an optimizer state (a dict of state and param_groups)", None),
    (TRAIN, 'checkpoint optimizer state of another form', ['--init_from=resume', '--out_dir={base}/ckpt_optim_foreign'],
     "{base}/ckpt_optim_foreign/ckpt.pt cannot be resumed: its optimizer is {{'param_groups': [", None),
    (TRAIN, 'checkpoint best_val_loss NaN', ['--init_from=resume', '--out_dir={base}/ckpt_best_nan'],
     "its best_val_loss is nan, not a number", None),
    (EVALUATE, 'checkpoint config a string', ['--out_dir={base}/ckpt_config_str'],
     "its config is 'shakespeare_char', not a dict (the run's configuration)", None),
    (SAMPLE, 'checkpoint config a string', ['--out_dir={base}/ckpt_config_str'], "its config is 'shakespeare_char'", None),
    (SAMPLE, 'checkpoint n_layer of 400 digits', ['--out_dir={base}/ckpt_huge_args'], "model_args have no sensible n_layer",
     NO_BIG_ALLOCATION),
    (TRAIN, 'checkpoint of NaN weights', ['--init_from=resume', '--out_dir={base}/ckpt_nan'],
     "{base}/ckpt_nan/ckpt.pt cannot be used: its weights are not all finite (NaN or infinity in model[", None),
    (SAMPLE, 'checkpoint of NaN weights', ['--out_dir={base}/ckpt_nan'], "its weights are not all finite", None),
    (['export_hf.py'], 'checkpoint of NaN weights', ['--out_dir={base}/ckpt_nan', '--export_dir={base}/hf_nan'],
     "its weights are not all finite", None),
    (['data/prepare.py'], "a tiktoken file that is not GPT-2's", ['--input={base}/ok.txt', '--dataset={base}/new_ds',
                                                                  '--tokenizer=gpt2'],
     "NANOGPT_GPT2_BPE={base}/other_bpe.tiktoken holds a BPE of 258 tokens that is not GPT-2's",
     {'env': dict(OFFLINE, NANOGPT_GPT2_BPE='{base}/other_bpe.tiktoken')}),
    (TRAIN, 'max_iters of 401 digits', ['--max_iters=1' + '0' * 400],
     "max_iters is an integer of 1,329 bits, too large for this toolkit (on the command line)", None),
    (TRAIN, 'learning_rate of 401 digits', ['--learning_rate=1' + '0' * 400],
     "learning_rate is an integer of 1,329 bits, too large for this toolkit", None),
    (TRAIN, 'config.json nested 100,000 deep', ['--init_from={base}/hfdir_deep'], "cannot read {base}/hfdir_deep/config.json",
     None),
    (SAMPLE, 'config.json with an n_layer of 401 digits', ['--init_from={base}/hfdir_huge'],
     "{base}/hfdir_huge/config.json has no sensible n_layer", NO_BIG_ALLOCATION),
    (EVALUATE, 'HellaSwag line nested 100,000 deep', ['--out_dir={base}/out', '--hellaswag=True',
                                                      '--hellaswag_path={base}/deep.jsonl'],
     "{base}/deep.jsonl line 1 nests brackets too deep to read", None),
    # --- issue 25: what went on silently with wrong results
    (EVALUATE, 'scored on data of another vocabulary', ['--out_dir={base}/out', '--dataset={base}/vocab80'],
     "the model's vocabulary (65 tokens) is not that of dataset {base}/vocab80 (80 tokens)", None),
    (TRAIN, 'cooldown_iters longer than the decay window', ['--cooldown_iters=6000', '--max_iters=2',
                                                            '--out_dir={scratch}/cooldown'],
     "warning: cooldown_iters=6000 is longer than the decay window after the warmup (lr_decay_iters - warmup_iters = "
     "4995)", None),
    (TRAIN, "evaluating another model into a run's out_dir", ['--out_dir={base}/out', '--eval_only=True'],
     "{base}/out already holds a run (ckpt.pt and metrics.jsonl)", None),
    (TRAIN, "evaluating a Hugging Face model into a run's out_dir",
     ['--out_dir={base}/out', '--eval_only=True', '--init_from={base}/hf65'],
     "{base}/out already holds a run", None),
    # --- issue 25: tracebacks where one line belongs
    (TRAIN, 'backend misspelt', ['--backend=ncl'], "unknown backend 'ncl'; use auto (nccl on GPUs, gloo on CPUs)", None),
    (TRAIN, 'flash attention with dropout on the CPU', ['--sdpa_backend=flash', '--dropout=0.1'],
     "sdpa_backend=flash has no kernel with dropout on the CPU", None),
    (BENCH, 'flash attention with dropout on the CPU', ['--sdpa_backend=flash', '--dropout=0.1'],
     "sdpa_backend=flash has no kernel with dropout on the CPU", None),
    (BENCH, 'a random batch of 64 GB', ['--real_data=False', '--batch_size=1000000', '--block_size=4096'],
     "GiB of this machine", NO_BIG_ALLOCATION),
    (BENCH, 'a profile_dir that cannot be created', ['--profile=True', '--profile_dir={base}/afile/trace'],
     "cannot create profile_dir {base}/afile/trace", None),
    (SAMPLE, 'a prompt file that never ends', ['--out_dir={base}/out', '--start=FILE:/dev/zero'],
     "the prompt file /dev/zero is longer than 16 MiB", NO_BIG_ALLOCATION),
    (['plot.py'], 'an iteration of 401 digits', ['--out_dir={base}/metrics_huge_iter'], "has no rows yet", None),
    (TRAIN, 'wandb without an API key', ['--wandb_log=True'], "run `wandb login` (or set WANDB_API_KEY), or log offline "
     "with WANDB_MODE=offline", {'env': NO_WANDB_KEY}),
    (TRAIN, 'Ctrl-C while starting', ['{base}/ctrl_c.py'], "error: interrupted (Ctrl-C)", CTRL_C),
    (SAMPLE, 'Ctrl-C while starting', ['--out_dir={base}/out', '{base}/ctrl_c.py'], "error: interrupted (Ctrl-C)", CTRL_C),
]


def snapshot(*folders):
    """Every file (its bytes) and folder under folders."""
    return {p: p.read_bytes() if p.is_file() else None
            for folder in folders for p in folder.rglob('*') if '__pycache__' not in p.parts}


def one_error_line(result, name):
    """The one line a failed run printed on stderr: non-zero exit, no traceback, one 'error: ' line."""
    assert result['rc'] not in (0, None), f"{name}: exit code {result['rc']}\n{result['stdout'][-1000:]}"
    assert 'Traceback' not in result['stderr'], f"{name}: {result['stderr'][-3000:]}"
    lines = result['stderr'].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), f"{name}: {result['stderr'][-3000:]}"
    return lines[0]


def hold_lock(folder):
    """Holds folder/run.lock as a training run does, from this process, until the file is closed."""
    lock = open(folder / 'run.lock', 'a+')
    fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    lock.write(f"pid {os.getpid()} on this test, started now\n")
    lock.flush()
    return lock


def one_warning_line(result, name):
    """The one line a run that went on printed on stderr: exit code 0, no traceback, one 'warning: ' line."""
    assert result['rc'] == 0 and 'Traceback' not in result['stderr'], f"{name}: {result['stderr'][-3000:]}"
    lines = result['stderr'].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('warning: '), f"{name}: {result['stderr'][-3000:]}"
    return lines[0]


def test_bad_inputs_each_give_one_line_and_change_nothing(project, bad, tmp_path):
    """Each case ends with one error line and changes nothing; a case whose expected line is a warning
    goes on (it is legitimate) and writes only into its own folder under {scratch}."""
    assert len(BAD_INPUTS) >= 60
    cases = [dict(cwd=project, argv=[*script, *(a.format(base=bad, scratch=tmp_path) for a in args)],
                  **({'rlimits': options['rlimits']} if 'rlimits' in (options or {}) else {}),
                  **({'env': script_env(**{k: v.format(base=bad) for k, v in options['env'].items()})}
                     if 'env' in (options or {}) else {}))
             for script, name, args, expected, options in BAD_INPUTS]
    for case, (script, name, args, _, _) in zip(cases, BAD_INPUTS):  # runs that would train write nowhere else
        if script is TRAIN and not any(a.startswith('--out_dir') for a in args):
            case['argv'].append(f'--out_dir={bad}/fresh_out')
    lock = hold_lock(bad / 'busy')
    before = snapshot(bad, project)
    try:
        with ThreadPoolExecutor(2) as pool:  # two runners, one per core, each forking its cases from one torch import
            halves = list(pool.map(run_cases, (cases[0::2], cases[1::2])))
    finally:
        lock.close()
    results = [None] * len(cases)
    results[0::2], results[1::2] = halves
    failed = []  # every case that fails, not only the first
    for (script, name, args, expected, options), result in zip(BAD_INPUTS, results):
        try:
            if expected.startswith('warning: '):
                line = one_warning_line(result, name)
            else:
                line = one_error_line(result, name)
                assert result['rc'] == (options or {}).get('rc', 1), f"{name}: exit code {result['rc']}"
            assert expected.format(base=bad) in line, f"{name}: {line}"
        except AssertionError as e:
            failed.append(f"{script[0]}, {name}: {str(e)[:1500]}")
    assert not failed, '\n\n'.join(failed)
    after = snapshot(bad, project)
    assert sorted(map(str, set(after) ^ set(before))) == []  # nothing created, nothing removed
    assert [str(p) for p in before if before[p] != after[p]] == []  # nothing changed


def test_payloads_in_meta_pkl_and_checkpoints_do_not_run(project, bad):
    """A meta.pkl or ckpt.pt from someone else, whose unpickling would create a folder: refused by
    name through train.py, bench.py, sample.py and export_hf.py, and the folder never appears. An
    upstream meta.pkl (plain pickle.dump of vocab_size, itos, stoi) still loads."""
    cases = [
        ([*TRAIN, '--dataset={base}/evil', '--out_dir={base}/fresh_out'], "{base}/evil/meta.pkl"),
        ([*BENCH, '--dataset={base}/evil'], "{base}/evil/meta.pkl"),
        (['sample.py', '--out_dir={base}/ckpt_evilmeta', '--device=cpu'], "{base}/evil/meta.pkl"),
        ([*TRAIN, '--init_from=resume', '--out_dir={base}/ckpt_payload'], "{base}/ckpt_payload/ckpt.pt"),
        (['sample.py', '--out_dir={base}/ckpt_payload', '--device=cpu'], "{base}/ckpt_payload/ckpt.pt"),
        (['export_hf.py', '--out_dir={base}/ckpt_payload'], "{base}/ckpt_payload/ckpt.pt"),
    ]
    results = run_cases([dict(cwd=project, argv=[a.format(base=bad) for a in argv]) for argv, _ in cases])
    for (argv, path), result in zip(cases, results):
        line = one_error_line(result, argv[0])
        assert line.startswith(f"error: {path.format(base=bad)} holds more than ") and 'could run code' in line, line
    assert not (bad / 'MARKER').exists()
    assert not (bad / 'fresh_out').exists()

    upstream_meta = bad / 'upstream_meta'
    upstream_meta.mkdir()
    chars = sorted(set("hello world"))
    meta = {'vocab_size': len(chars), 'itos': dict(enumerate(chars)), 'stoi': {c: i for i, c in enumerate(chars)}}
    with open(upstream_meta / 'meta.pkl', 'wb') as f:
        pickle.dump(meta, f)  # as upstream's data/shakespeare_char/prepare.py writes it
    assert load_meta(str(upstream_meta)) == meta


def test_two_runs_into_one_out_dir(project, tmp_path):
    """The second of two concurrent runs is refused, naming the first; once the first is killed
    (kill -9 leaves its lock file behind), a resume goes ahead."""
    out = tmp_path / 'out'
    first = subprocess.Popen([sys.executable, *TRAIN, f'--out_dir={out}', '--max_iters=100000', '--eval_interval=5',
                              '--always_save_checkpoint=True'], cwd=project, env=script_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in first.stdout:
            if line.startswith('saved checkpoint'):
                break
        second = run_script(project, *TRAIN, f'--out_dir={out}', '--max_iters=20', '--init_from=resume', check=False)
        assert second.returncode == 1 and 'Traceback' not in second.stderr
        assert second.stderr.strip() == (f"error: {out} is in use by another training run (pid {first.pid} on "
                                         f"{os.uname().nodename}, started {(out / 'run.lock').read_text().split('started ')[1].strip()}); "
                                         f"wait for it to end, or train into another --out_dir")
        assert first.poll() is None  # the first goes on
    finally:
        first.kill()
        first.wait()
    assert (out / 'run.lock').exists()
    n = torch.load(out / 'ckpt.pt', map_location='cpu', weights_only=True)['iter_num']
    proc = run_script(project, *TRAIN, f'--out_dir={out}', f'--max_iters={n + 2}', '--eval_interval=5',
                      '--init_from=resume')
    assert f"iter {n + 1}: loss" in proc.stdout


def test_two_ranks_stop_together_when_the_out_dir_is_refused(project, bad):
    """Under torchrun only rank 0 claims out_dir; when it is refused, both ranks end at once (no rank
    left waiting), with the one line of rank 0 and no traceback or connection error from the other."""
    proc = torchrun(project, *TRAIN, f'--out_dir={bad}/out', '--gradient_accumulation_steps=2', check=False)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith('error: ')]
    assert errors == [f"error: {bad}/out already holds a run (ckpt.pt and metrics.jsonl); continue it with "
                      f"--init_from=resume, or start a new one with another --out_dir (or delete ckpt.pt and "
                      f"metrics.jsonl there first)"], proc.stderr
    # what torchrun itself reports is its business; the ranks add nothing of their own
    children = proc.stderr.split('ChildFailedError')[0]
    assert 'Traceback (most recent call last):\n  File "' + str(project) not in children
    assert 'gloo' not in proc.stderr.lower() and 'connection' not in proc.stderr.lower(), proc.stderr


ON_MASTER = '''
import os, sys
sys.path.insert(0, {repo!r})
from nanogpt import ScriptError, distributed
distributed.setup('gloo', 'cpu')
def claim():
    raise ScriptError('out_dir refused')
distributed.on_master(int(os.environ['RANK']) == 0, 'cpu', claim)
print('went on', flush=True)
'''


def test_a_refusal_on_the_master_stops_every_rank(tmp_path):
    """distributed.on_master with two real gloo processes: what rank 0 alone refuses ends rank 1 too,
    quietly, instead of letting it go on (to wait for rank 0 forever, or fail with a traceback)."""
    import socket
    from conftest import REPO
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, '-c', ON_MASTER.format(repo=str(REPO))], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env=script_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE='2', MASTER_ADDR='127.0.0.1',
                                             MASTER_PORT=str(port)))
             for r in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [1, 1]
    assert [out for out, _ in outputs] == ['', '']  # neither went on
    assert [err.strip() for _, err in outputs] == ['error: out_dir refused', '']  # said once, by rank 0


# ----------------------------------------------------------------------------- a full disk

def test_full_disk_during_a_checkpoint_save_keeps_the_previous_one(project, tmp_path):
    """A tmpfs with room for one checkpoint but not for the next one beside it (the new one is
    written whole before it replaces the old), in a mount namespace of the test's own."""
    if shutil.which('unshare') is None:
        pytest.skip("no unshare command here to make a small tmpfs with")
    disk, after = tmp_path / 'disk', tmp_path / 'after'
    disk.mkdir()
    command = (f"mount -t tmpfs -o size=600k tmpfs {disk} || exit 99; "
               f"{sys.executable} {' '.join(TRAIN)} --out_dir={disk}/out --max_iters=20 --eval_interval=5 "
               f"--always_save_checkpoint=True >{tmp_path}/stdout 2>{tmp_path}/stderr; echo $? >{tmp_path}/rc; "
               f"cp -a {disk}/out {after}")
    proc = subprocess.run(['unshare', '--map-root-user', '--mount', 'sh', '-c', command], cwd=project, env=script_env(),
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 or not (tmp_path / 'rc').exists():
        pytest.skip(f"cannot mount a small tmpfs here (unshare: {proc.stderr.strip() or proc.returncode})")
    stderr = (tmp_path / 'stderr').read_text()
    assert (tmp_path / 'rc').read_text().strip() == '1' and 'Traceback' not in stderr
    assert stderr.strip() == f"error: cannot write {disk}/out/ckpt.pt: No space left on device; the previous ckpt.pt " \
                             f"is kept as it was"
    assert 'saved checkpoint to' in (tmp_path / 'stdout').read_text()  # the first one fitted
    assert torch.load(after / 'ckpt.pt', map_location='cpu', weights_only=True)['iter_num'] == 5
    assert sorted(p.name for p in after.iterdir()) == ['ckpt.pt', 'metrics.jsonl', 'run.lock']


def test_a_file_size_limit_during_saves_keeps_what_was_there(project, bad, tmp_path, shakespeare_txt, gpt2_bpe):
    """RLIMIT_FSIZE makes a write past the limit fail (EFBIG) as a full disk does (ENOSPC): the same
    OSError from the same write, so it stands in where no tmpfs can be made. A checkpoint save, a
    dataset preparation over an existing dataset, an export and a corpus's first shard each say so in
    one line and leave what was there."""
    out, dataset, text = tmp_path / 'out', tmp_path / 'dataset', tmp_path / 'text.txt'
    text.write_text(shakespeare_txt.read_text(encoding='utf-8')[:300_000], encoding='utf-8')  # too short for a progress bar
    corpus, shards = tmp_path / 'corpus', tmp_path / 'shards'
    corpus.mkdir()
    (corpus / 'docs.jsonl').write_text(''.join(json.dumps({'text': text.read_text(encoding='utf-8')[i:i + 10_000]}) + '\n'
                                               for i in range(0, 300_000, 10_000)), encoding='utf-8')
    shutil.copytree(bad / 'out', out)
    shutil.copytree(bad / 'existing_ds', dataset)
    limit = {'RLIMIT_FSIZE': 100_000}  # above metrics.jsonl and meta.pkl, below a checkpoint, an export, train.bin
    before = snapshot(out, dataset)
    results = run_cases([
        dict(cwd=project, argv=[*TRAIN, f'--out_dir={out}', '--init_from=resume', '--max_iters=12', '--eval_interval=2',
                                '--always_save_checkpoint=True'], rlimits=limit),
        dict(cwd=project, argv=['data/prepare.py', f'--input={text}', f'--dataset={dataset}'], rlimits=limit),
        dict(cwd=project, argv=['export_hf.py', f'--out_dir={out}', f'--export_dir={tmp_path}/hf'], rlimits=limit),
        dict(cwd=project, argv=['data/fineweb_edu/prepare.py', f'--source={corpus}', f'--dataset={shards}',
                                '--shard_tokens=60000', '--num_proc=1'], rlimits=limit),  # 120 kB shards
    ])
    assert [one_error_line(r, 'saving') for r in results] == [
        f"error: cannot write {out}/ckpt.pt: File too large; the previous ckpt.pt is kept as it was",
        f"error: cannot write train.bin, val.bin, meta.pkl in {dataset}: File too large; the files there are left as "
        f"they were",
        f"error: cannot write model.safetensors, tokenizer.json, tokenizer_config.json, generation_config.json, "
        f"README.md, config.json in {tmp_path}/hf: File too large; nothing was written",
        f"error: cannot write {shards}/val_000.bin: File too large; nothing was written"]
    def kept(files):  # the resumed run holds run.lock and may add rows to metrics.jsonl: the rest stays
        return {p: v for p, v in files.items() if p.name not in ('metrics.jsonl', 'run.lock')}
    assert kept(snapshot(out, dataset)) == kept(before)
    assert not (tmp_path / 'hf').exists()
    assert sorted(p.name for p in shards.iterdir()) == ['meta.pkl']  # what the next run continues from


# ----------------------------------------------------------------------------- datasets swapped in whole

KILL_AT_RENAME = '''
import os, sys
sys.path.insert(0, {repo!r})
from nanogpt.data import write_dataset
renames, real_replace = [0], os.replace
def replace(src, dst):  # the process dies (no cleanup of any kind) just before rename number {n}
    renames[0] += 1
    if renames[0] == {n}:
        os._exit(9)
    real_replace(src, dst)
os.replace = replace
write_dataset({folder!r}, list(range(7)) * 10, list(range(7)) * 5, {{'vocab_size': 7}})
'''


@pytest.mark.parametrize('kill_at', [1, 2, 3, 4])
def test_a_dataset_is_swapped_in_whole_whenever_the_preparation_is_killed(tmp_path, kill_at):
    """write_dataset renames its journal into place (rename 1), then train.bin, val.bin and meta.pkl
    (renames 2-4). Killed before the journal, the old dataset is read; killed after it, a reader
    completes the swap and reads the new one: never a mix."""
    from conftest import REPO
    folder = tmp_path / 'ds'
    write_dataset(folder, list(range(50)) * 2, list(range(50)), {'vocab_size': 50})
    old = snapshot(folder)
    proc = subprocess.run([sys.executable, '-c', KILL_AT_RENAME.format(repo=str(REPO), folder=str(folder), n=kill_at)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    meta = load_meta(str(folder))  # a reader
    train = np.fromfile(folder / 'train.bin', dtype=np.uint16)
    val = np.fromfile(folder / 'val.bin', dtype=np.uint16)
    if kill_at == 1:
        assert meta['vocab_size'] == 50 and len(train) == 100 and len(val) == 50
        assert {p: v for p, v in snapshot(folder).items() if not p.name.endswith('.tmp')} == old
    else:
        assert meta['vocab_size'] == 7 and train.tolist() == list(range(7)) * 10 and len(val) == 35
        assert sorted(p.name for p in folder.iterdir()) == ['meta.pkl', 'train.bin', 'val.bin']
    write_dataset(folder, list(range(3)) * 4, list(range(3)) * 2, {'vocab_size': 3})  # and the next preparation works
    assert load_meta(str(folder))['vocab_size'] == 3 and not (folder / '.swap.json').exists()


def test_a_journal_cannot_move_files_outside_its_folder(tmp_path):
    folder = tmp_path / 'ds'
    write_dataset(folder, list(range(10)), list(range(10)), {'vocab_size': 10})
    (tmp_path / 'victim.txt').write_text('keep me')
    (folder / '.swap.json').write_text(json.dumps([['../victim.txt', 'train.bin']]))
    with pytest.raises(SystemExit, match=r"holds an interrupted swap of its files .* cannot be completed here"):
        load_meta(str(folder))
    assert (tmp_path / 'victim.txt').read_text() == 'keep me'


def test_a_resume_keeps_the_checkpoint_shape_says_so_and_records_it(project, bad, tmp_path):
    out = tmp_path / 'out'
    shutil.copytree(bad / 'out', out)
    proc = run_script(project, *TRAIN, f'--out_dir={out}', '--init_from=resume', '--n_layer=3', '--bias=True',
                      '--max_iters=12', '--eval_interval=2', '--always_save_checkpoint=True')
    assert proc.stderr.strip() == ("warning: the resumed model keeps the checkpoint's n_layer=2, bias=False, not "
                                   "n_layer=3, bias=True as configured")
    ckpt = torch.load(out / 'ckpt.pt', map_location='cpu', weights_only=True)
    assert ckpt['iter_num'] == 12 and ckpt['model_args']['n_layer'] == 2
    assert {k: ckpt['config'][k] for k in ('n_layer', 'n_head', 'n_embd', 'bias')} == \
           {k: ckpt['model_args'][k] for k in ('n_layer', 'n_head', 'n_embd', 'bias')}  # the shape the run has


# ----------------------------------------------------------------------------- links, leftovers, permissions

def test_no_writer_writes_through_a_link_and_each_removes_the_leftovers_of_killed_writes(tmp_path, capsys):
    """Every file the toolkit writes goes through these: atomic_write (checkpoints, shards, meta.pkl, plots,
    metrics rewritten), swap_in (datasets, exports), the run's lock and the metrics appends. A link at a
    file's name, or at its temporary name, is refused in one line and the file it leads to is left alone."""
    from nanogpt.files import append_metrics, atomic_write, claim_out_dir, swap_in
    victim = tmp_path / 'victim.txt'
    victim.write_text('keep me')
    for name in ('ckpt.pt', 'ckpt.pt.tmp'):
        folder = tmp_path / f'atomic_{name}'
        folder.mkdir()
        (folder / name).symlink_to(victim)
        with pytest.raises(SystemExit, match=rf"error: {folder}/{name} is a symbolic link \(to {victim}\)"):
            with atomic_write(folder / 'ckpt.pt') as f:
                f.write(b'new')
    for name in ('val.bin', '.swap.json'):
        folder = tmp_path / f'swap_{name}'
        folder.mkdir()
        (folder / name).symlink_to(victim)
        with pytest.raises(SystemExit, match=rf"error: {folder}/{name} is a symbolic link"):
            with swap_in(folder, ('train.bin', 'val.bin')) as staged:
                for path in staged.values():
                    open(path, 'wb').write(b'new')
        assert sorted(p.name for p in folder.iterdir()) == [name]
    folder = tmp_path / 'lock'
    folder.mkdir()
    (folder / 'run.lock').symlink_to(victim)
    with pytest.raises(SystemExit, match=r"run.lock is a symbolic link"):
        claim_out_dir(str(folder), new_run=True)
    os.link(victim, tmp_path / 'metrics.jsonl')  # a hard link: appending would change victim.txt
    append_metrics(str(tmp_path / 'metrics.jsonl'), {'iter': 0, 'loss': 1.0})
    assert 'warning: cannot append to' in capsys.readouterr().err
    assert victim.read_text() == 'keep me'

    # the leftovers of killed writes: atomic_write's temporary file, and those of a swap_in whose process
    # is gone (not those of a process that still runs: it may be writing them)
    folder = tmp_path / 'leftovers'
    folder.mkdir()
    (folder / 'ckpt.pt.tmp').write_bytes(b'torn')
    with atomic_write(folder / 'ckpt.pt') as f:
        f.write(b'whole')
    dead, alive = 'train.bin.999999999-0badcafe.tmp', f'train.bin.{os.getppid()}-0badcafe.tmp'
    for name in (dead, alive, 'notes.tmp'):
        (folder / name).write_bytes(b'torn')
    with swap_in(folder, ('train.bin',)) as staged:
        open(staged['train.bin'], 'wb').write(b'tokens')
    assert sorted(p.name for p in folder.iterdir()) == sorted(['ckpt.pt', 'train.bin', alive, 'notes.tmp'])
    assert (folder / 'ckpt.pt').read_bytes() == b'whole' and (folder / 'train.bin').read_bytes() == b'tokens'


def test_files_are_created_with_the_users_umask(project, bad, tmp_path, shakespeare_txt):
    """A group-writable umask (002) gives group-writable files: checkpoint, metrics, lock, dataset, export
    (safetensors makes its files private, 0600) and plot."""
    text = tmp_path / 'text.txt'
    text.write_text(shakespeare_txt.read_text(encoding='utf-8')[:20_000], encoding='utf-8')
    out, dataset, hf = tmp_path / 'out', tmp_path / 'dataset', tmp_path / 'hf'
    results = run_cases([dict(cwd=project, argv=argv, umask=0o002) for argv in (
        ['data/prepare.py', f'--input={text}', f'--dataset={dataset}'],
        [*TRAIN, f'--dataset={dataset}', f'--out_dir={out}', '--max_iters=2', '--eval_interval=2'],
        ['export_hf.py', f'--out_dir={out}', f'--export_dir={hf}'],
        ['plot.py', f'--out_dir={out}'])])
    assert [r['rc'] for r in results] == [0, 0, 0, 0], [r['stderr'][-2000:] for r in results]
    files = [dataset / 'train.bin', dataset / 'val.bin', dataset / 'meta.pkl', out / 'ckpt.pt', out / 'metrics.jsonl',
             out / 'run.lock', hf / 'config.json', hf / 'model.safetensors', out / 'loss.png']
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: '0o664' for p in files}


# ----------------------------------------------------------------------------- what a crash or a mistake leaves

def test_an_out_dir_without_a_checkpoint_is_not_a_run_to_protect(project, tmp_path):
    """A run whose first save failed (or that diverged before one) leaves metrics.jsonl and no ckpt.pt:
    the same command starts again, and its metrics replace the old rows."""
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'metrics.jsonl').write_text('{"iter": 0, "train_loss": 4.2, "val_loss": 4.2}\n{"iter": 1, "loss": 4.1}\n')
    proc = run_script(project, *TRAIN, f'--out_dir={out}', '--max_iters=2', '--eval_interval=2')
    assert proc.stderr == ''
    rows = [json.loads(line) for line in (out / 'metrics.jsonl').read_text().splitlines()]
    assert [r['iter'] for r in rows] == [0, 0, 1, 2] and rows[0]['train_loss'] != 4.2


def test_a_metrics_line_cut_by_a_crash_is_mended_on_resume(project, bad, tmp_path):
    out = tmp_path / 'out'
    shutil.copytree(bad / 'out', out)
    with open(out / 'metrics.jsonl', 'a') as f:
        f.write('{"iter": 10, "loss": 2.1')  # a crash in the middle of an append
    run_script(project, *TRAIN, f'--out_dir={out}', '--init_from=resume', '--max_iters=12', '--eval_interval=10')
    lines = (out / 'metrics.jsonl').read_text().splitlines()
    rows = [json.loads(line) for line in lines]  # every line whole
    assert [r['iter'] for r in rows if 'loss' in r] == list(range(12))
    assert [r['iter'] for r in rows if 'val_loss' in r] == [0, 10, 12]  # 10 kept, not repeated; 12 the end


def test_an_evaluation_only_run_evaluates_and_writes_no_checkpoint(project, bad, tmp_path):
    """--eval_only=True on a checkpoint saved at an iteration that is no multiple of eval_interval (a
    run stopped by SIGTERM) evaluates it, once, records it, and leaves the checkpoint as it was, also
    with always_save_checkpoint."""
    out = tmp_path / 'out'
    checkpoint_variant(bad / 'out' / 'ckpt.pt', out, iter_num=7, last_eval_iter=5)
    before = (out / 'ckpt.pt').read_bytes()
    proc = run_script(project, *TRAIN, f'--out_dir={out}', '--init_from=resume', '--eval_only=True',
                      '--eval_interval=5', '--always_save_checkpoint=True')
    steps = [line for line in proc.stdout.splitlines() if line.startswith('step ')]
    assert len(steps) == 1 and steps[0].startswith('step 7: train loss '), proc.stdout[-2000:]
    assert 'saved checkpoint' not in proc.stdout and (out / 'ckpt.pt').read_bytes() == before
    assert [r['iter'] for r in read_metrics(out / 'metrics.jsonl')] == [7]


def param_groups(state):
    """The param_groups of an optimizer state dict, or of a dict of them (Muon and AdamW)."""
    if 'param_groups' in state:
        return state['param_groups']
    return [g for part in state.values() for g in param_groups(part)]


def test_a_resume_takes_the_optimizer_settings_configured(project, bad, tmp_path):
    """The moments come from the checkpoint, the settings from the configuration, as the saved config
    says: AdamW's betas and weight decay, Muon's learning rate (the advice a diverged run gives), its
    momentum and weight decay."""
    out = tmp_path / 'out'
    shutil.copytree(bad / 'out', out)
    run_script(project, *TRAIN, f'--out_dir={out}', '--init_from=resume', '--max_iters=12', '--eval_interval=2',
               '--always_save_checkpoint=True', '--beta1=0.8', '--beta2=0.9', '--weight_decay=0.5')
    ckpt = torch.load(out / 'ckpt.pt', map_location='cpu', weights_only=True)
    assert ckpt['iter_num'] == 12 and ckpt['config']['weight_decay'] == 0.5
    assert [(tuple(g['betas']), g['weight_decay']) for g in param_groups(ckpt['optimizer'])] == [((0.8, 0.9), 0.5),
                                                                                                ((0.8, 0.9), 0.0)]

    muon = tmp_path / 'muon'
    run_script(project, *TRAIN, f'--out_dir={muon}', '--optimizer=muon', '--max_iters=4', '--eval_interval=4')
    run_script(project, *TRAIN, f'--out_dir={muon}', '--optimizer=muon', '--init_from=resume', '--max_iters=6',
               '--eval_interval=2', '--always_save_checkpoint=True', '--muon_learning_rate=0.01',
               '--muon_momentum=0.8', '--weight_decay=0.3', '--learning_rate=2e-3', '--min_lr=1e-4')
    groups = param_groups(torch.load(muon / 'ckpt.pt', map_location='cpu', weights_only=True)['optimizer'])
    muon_groups = [g for g in groups if 'momentum' in g]
    adamw_groups = [g for g in groups if 'betas' in g]
    assert len(muon_groups) == 1 and len(adamw_groups) == 2
    assert (muon_groups[0]['momentum'], muon_groups[0]['weight_decay']) == (0.8, 0.3)
    assert muon_groups[0]['lr'] == pytest.approx(adamw_groups[0]['lr'] * 0.01 / 2e-3)  # muon_learning_rate / learning_rate


def test_a_tiny_temperature_samples_the_likeliest_tokens(project, bad):
    """A temperature so small that logits / temperature overflow (1e-39) samples as temperature 0 does."""
    results = run_cases([dict(cwd=project, argv=[*SAMPLE, f'--out_dir={bad}/out', '--max_new_tokens=40',
                                                 f'--temperature={t}']) for t in (0, 1e-39)])
    assert [r['rc'] for r in results] == [0, 0], results[1]['stderr'][-2000:]
    samples = [[line for line in r['stdout'].splitlines() if not line.startswith('Overriding')] for r in results]
    assert samples[0] == samples[1] and samples[0][-1] == '---------------'


def test_ctrl_c_while_sampling_is_one_line_and_exit_code_130(project, bad):
    proc = subprocess.Popen([sys.executable, *SAMPLE, f'--out_dir={bad}/out', '--max_new_tokens=1000000'],
                            cwd=project, env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out = ''
        while 'Overriding: max_new_tokens = 1000000\n' not in out:  # the last line before the model loads
            out += proc.stdout.read(1) or pytest.fail(f"sample.py ended: {proc.stderr.read()[-2000:]}")
        assert len(proc.stdout.read(20)) == 20  # the prompt and generated tokens: sampling has begun
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130 and stderr.strip() == 'error: interrupted (Ctrl-C)', stderr[-2000:]


DIFFERENT_RANKS = "import os\nlearning_rate = 1e-3 * (1 + int(os.environ['RANK']))  # a setting that differs per rank\n"


def test_torchrun_refuses_ranks_given_different_settings_and_nccl_on_a_cpu(project, tmp_path):
    config = tmp_path / 'per_rank.py'
    config.write_text(DIFFERENT_RANKS)
    for args, expected in (
            ([str(config)], "error: the processes were given different settings (learning_rate is 0.001 on rank 0 "
                            "and 0.002 on rank 1); give every process the same config files and --key=value overrides"),
            (['--backend=nccl'], "error: backend=nccl connects CUDA GPUs, and this run is on cpu; use backend=gloo "
                                 "(or auto)")):
        proc = torchrun(project, *TRAIN, f'--out_dir={tmp_path}/out', '--gradient_accumulation_steps=2',
                        '--max_iters=4', *args, check=False)
        assert proc.returncode != 0
        assert [line for line in proc.stderr.splitlines() if line.startswith('error: ')] == [expected], proc.stderr
        children = proc.stderr.split('ChildFailedError')[0]  # torchrun's own report of the failure is its business
        assert 'Traceback (most recent call last):\n  File "' + str(project) not in children, proc.stderr
        assert not (tmp_path / 'out').exists()
