"""
One training iteration of config/train_shakespeare_char_cpu.py's model, upstream nanoGPT's loop
against this toolkit's, timed in one process in alternating blocks, so that a shared machine's
slow spells hit both alike (end-to-end runs minutes apart can differ by 20% on such machines).
$ python benchmarks/step_vs_upstream.py --upstream=../nanoGPT

Upstream's iteration as its train.py runs it on a CPU: the memmap reopened and a Python loop over
rows for each batch, forward, backward, clipping, non-fused AdamW, loss.item(). Ours: train_step
with dataset.get_batch, reading loss and gradient norm back as train.py does at a log line.
"""

import contextlib
import importlib.util
import os
import statistics
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configurator import configure  # noqa: E402
from nanogpt import ScriptError  # noqa: E402
from nanogpt.data import dataset_dir, get_batch  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402
from nanogpt.training import train_step  # noqa: E402

# -----------------------------------------------------------------------------
upstream = ''  # a checkout of karpathy/nanoGPT (its model.py is imported from there)
dtypes = 'float32,bfloat16'  # our runs
blocks = 15  # alternating blocks per run
block_iters = 20  # iterations per block
# -----------------------------------------------------------------------------
configure(globals())
if not upstream or not os.path.isfile(os.path.join(upstream, 'model.py')):
    raise ScriptError("give --upstream=PATH, a checkout of https://github.com/karpathy/nanoGPT")
MODEL = dict(block_size=64, vocab_size=65, n_layer=4, n_head=4, n_embd=128, dropout=0.0, bias=False)
BATCH, BLOCK = 12, 64
train_bin = os.path.join(dataset_dir('shakespeare_char'), 'train.bin')
if not os.path.exists(train_bin):
    raise ScriptError("run python data/shakespeare_char/prepare.py first")


def upstream_iteration():
    spec = importlib.util.spec_from_file_location('upstream_model', os.path.join(upstream, 'model.py'))
    upstream_model = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(upstream_model)
    torch.manual_seed(1337)
    model = upstream_model.GPT(upstream_model.GPTConfig(**MODEL))
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), 'cpu')

    def batch():
        data = np.memmap(train_bin, dtype=np.uint16, mode='r')
        ix = torch.randint(len(data) - BLOCK, (BATCH,))
        x = torch.stack([torch.from_numpy(data[i:i + BLOCK].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + BLOCK].astype(np.int64)) for i in ix])
        return x, y
    state = {'xy': batch()}

    def iteration():
        x, y = state['xy']
        _, loss = model(x, y)
        state['xy'] = batch()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()
    return iteration


def our_iteration(dtype):
    torch.manual_seed(1337)
    model = GPT(GPTConfig(**MODEL))
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), 'cpu', verbose=False)
    scaler = torch.amp.GradScaler('cpu', enabled=False)
    ctx = torch.autocast('cpu', dtype=torch.bfloat16) if dtype == 'bfloat16' else contextlib.nullcontext()
    data = np.memmap(train_bin, dtype=np.uint16, mode='r')
    state = {'it': 0, 'xy': get_batch(data, BATCH, BLOCK, (1337, 0, 0, 0), 65)}

    def batch(it, micro_step):
        return get_batch(data, BATCH, BLOCK, (1337, 0, it, micro_step), 65)

    def iteration():
        x, y, loss, norm = train_step(model, optimizer, scaler, ctx, *state['xy'], batch=batch, it=state['it'],
                                      micro_steps=1, grad_clip=1.0)
        state['it'] += 1
        state['xy'] = (x, y)
        return torch.stack((loss, norm)).tolist()
    return iteration


with contextlib.redirect_stdout(open(os.devnull, 'w')):
    runs = {'upstream nanoGPT': upstream_iteration(), **{f'this toolkit, {d}': our_iteration(d) for d in dtypes.split(',')}}
for iteration in runs.values():
    for _ in range(block_iters):
        iteration()
times = {name: [] for name in runs}
for _ in range(blocks):
    for name, iteration in runs.items():
        t0 = time.perf_counter()
        for _ in range(block_iters):
            iteration()
        times[name].append((time.perf_counter() - t0) / block_iters * 1000)
base = statistics.median(times['upstream nanoGPT'])
print(f"| run | ms/iter (median of {blocks} blocks) | fastest block | faster than upstream |")
print("|---|---|---|---|")
for name, t in times.items():
    print(f"| {name} | {statistics.median(t):.1f} | {min(t):.1f} | {base / statistics.median(t):.2f}x |")
