"""
Side-by-side speed of this toolkit and upstream nanoGPT, printed as a table.

CPU: config/train_shakespeare_char_cpu.py end to end (2000 iterations with their evaluations), in
float32 (the default) and bfloat16 (opt-in): ms per iteration, total wall time, val loss at the end.
$ python benchmarks/compare.py --device=cpu [--upstream=../nanoGPT] [--rounds=3]

GPU: first a check of the attention kernels (config/train_shakespeare_char.py, 500 iterations, with
sdpa_backend=flash and with auto: the same seed should give the same val loss); then bench.py on
GPT-2 124M (batch 12, block 1024, bfloat16, compiled, no gradient clipping, as upstream's bench.py):
ms per iteration, tokens/s, MFU; and config/train_shakespeare_char.py end to end (5000 iterations
with evaluations, compile included, both clipping at 1.0): total wall time, ms per iteration, best
val loss.
$ python benchmarks/compare.py --device=cuda [--upstream=../nanoGPT]

--upstream is a checkout of https://github.com/karpathy/nanoGPT; its data/shakespeare_char is filled
from ours. Without it, the tables compare with upstream's figures recorded on the same kinds of
machine (2-core CPU with PyTorch 2.13; one H200 with PyTorch 2.11), in rows marked 'recorded'.
The data is prepared from the tiny Shakespeare text that ships in data/shakespeare_char/input.txt.
"""

import os
import re
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configurator import configure  # noqa: E402
from nanogpt import ScriptError  # noqa: E402

# -----------------------------------------------------------------------------
device = 'cpu'  # 'cpu' for the CPU comparison, 'cuda' for the GPU one
upstream = ''  # a checkout of karpathy/nanoGPT to run side by side; empty: upstream's recorded figures
rounds = 1  # each run this many times, interleaved (CPU timings on shared machines are noisy)
max_iters = 0  # 0: the configs' own (2000 on CPU, 5000 on GPU); fewer for a quick look
cpu_dtypes = 'float32,bfloat16'  # CPU: our runs
e2e_compile_modes = 'default,reduce-overhead'  # GPU: our end-to-end runs
attention_check_iters = 500  # GPU: iterations of the flash-against-auto check; 0 skips it
log_dir = 'bench_results'  # every run's output goes here
# -----------------------------------------------------------------------------
configure(globals())
RECORDED = {  # upstream nanoGPT, as measured for the issue this script answers
    'cpu': {'ms': 46.5, 'total': 103.0, 'val': 1.886},
    'bench': {'ms': 26.2, 'tokens': 468_000, 'mfu': 40.5},
    'e2e': {'ms': 14.0, 'total': 142.0, 'val': 1.467},
}
UPSTREAM_CPU_ARGS = ['config/train_shakespeare_char.py', '--device=cpu', '--compile=False', '--eval_iters=20',
                     '--log_interval=1', '--block_size=64', '--batch_size=12', '--n_layer=4', '--n_head=4',
                     '--n_embd=128', '--max_iters=2000', '--lr_decay_iters=2000', '--dropout=0.0']
# what this script runs in an upstream checkout
UPSTREAM_FILES = ('train.py', 'model.py', 'bench.py', 'configurator.py', os.path.join('config', 'train_shakespeare_char.py'))
DATA = os.path.join(ROOT, 'data', 'shakespeare_char')


def check_inputs():
    """Everything the runs need is there before any of them starts (the device machine has no network)."""
    if device != 'cpu' and not device.startswith('cuda'):
        raise ScriptError(f"device={device!r}: use cpu or cuda")
    if upstream:
        if not os.path.isdir(upstream):
            raise ScriptError(f"upstream={upstream!r} does not exist; clone https://github.com/karpathy/nanoGPT there, "
                              f"or leave upstream empty to compare with upstream's recorded figures")
        missing = [f for f in UPSTREAM_FILES if not os.path.isfile(os.path.join(upstream, f))]
        if missing:
            raise ScriptError(f"upstream={upstream!r} is not a nanoGPT checkout: it lacks {', '.join(missing)}")
    if not os.path.exists(os.path.join(DATA, 'train.bin')) and not os.path.exists(os.path.join(DATA, 'input.txt')):
        raise ScriptError(f"{os.path.join(DATA, 'input.txt')} is missing (the project ships it: git checkout -- "
                          f"data/shakespeare_char/input.txt), and the data is not prepared either")


def prepare_data():
    if not os.path.exists(os.path.join(DATA, 'train.bin')):
        run('prepare', [sys.executable, 'data/shakespeare_char/prepare.py'], ROOT)
    if upstream:
        target = os.path.join(upstream, 'data', 'shakespeare_char')
        os.makedirs(target, exist_ok=True)
        for name in ('train.bin', 'val.bin', 'meta.pkl'):
            shutil.copy(os.path.join(DATA, name), target)


def run(name, cmd, cwd):
    """Runs cmd, keeps its output in log_dir/name.log; returns (stdout and stderr, wall seconds)."""
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    seconds = time.time() - t0
    with open(os.path.join(log_dir, f'{name}.log'), 'w') as f:
        f.write(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise ScriptError(f"{name} failed ({' '.join(cmd)}); see {log_dir}/{name}.log")
    return proc.stdout + proc.stderr, seconds


def fresh_out_dir(out):
    """Each run of this comparison starts anew: train.py refuses a new run in an out_dir that holds
    one, and the whole-split loss must not read an earlier run's checkpoint. Only this script's own
    run folders are removed (upstream's out-compare, inside its checkout, and ours under log_dir)."""
    if os.path.isdir(out):
        shutil.rmtree(out)


def compiled(name, text):
    """The run's name, marked where torch.compile failed and the run went on uncompiled."""
    return name + (' (UNCOMPILED: torch.compile failed)' if 'running uncompiled' in text else '')


def train_summary(stdout, seconds):
    """Median iteration time (the first 10 logged iterations left out: warm-up, compilation), total
    wall time, last and best val loss, time spent evaluating."""
    times = [float(t) for t in re.findall(r'^iter \d+: loss [\d.]+, time ([\d.]+)ms', stdout, re.M)]
    vals = [float(v) for v in re.findall(r'^step \d+: train loss [\d.]+, val loss ([\d.]+)', stdout, re.M)]
    evals = [float(s) for s in re.findall(r'^step \d+: .*, eval ([\d.]+)s', stdout, re.M)]
    return {'ms': statistics.median(times[10:] or times), 'total': seconds, 'val': vals[-1], 'best': min(vals),
            'eval': sum(evals) if evals else None}


def whole_split_val_loss(ckpt_path):
    """Loss of a checkpoint's model over the whole val split, in consecutive windows of its block size:
    the printed val loss averages 20 random batches, which differ from run to run by about +-0.013."""
    import numpy as np
    import torch
    from nanogpt.checkpoint import load_checkpoint, model_from_checkpoint
    from nanogpt.data import dataset_dir, load_meta, open_split
    checkpoint = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(checkpoint, ckpt_path).eval()
    block, vocab_size = checkpoint['model_args']['block_size'], checkpoint['model_args']['vocab_size']
    data_dir = dataset_dir('shakespeare_char')
    data = open_split(data_dir, 'val', load_meta(data_dir), block, vocab_size).astype(np.int64)
    n = (len(data) - 1) // block
    x = torch.from_numpy(data[:n * block].reshape(n, block))
    y = torch.from_numpy(data[1:n * block + 1].reshape(n, block))
    with torch.inference_mode():
        losses = [model(x[i:i + 256], y[i:i + 256])[1].item() * len(x[i:i + 256]) for i in range(0, n, 256)]
    return sum(losses) / n


def table(title, header, rows):
    print(f"\n{title}")
    print('| ' + ' | '.join(header) + ' |')
    print('|' + '---|' * len(header))
    for row in rows:
        print('| ' + ' | '.join(row) + ' |')


def cpu_comparison():
    # a shorter run is evaluated at its end as well, as upstream does only at multiples of eval_interval
    iters = [f'--max_iters={max_iters}', f'--lr_decay_iters={max_iters}', f'--eval_interval={max_iters}'] if max_iters else []
    runs = {}
    if upstream:
        # always_save_checkpoint: the checkpoint then holds the final model, for the whole-split loss
        runs['upstream nanoGPT'] = ([sys.executable, 'train.py', *UPSTREAM_CPU_ARGS, '--out_dir=out-compare',
                                     '--always_save_checkpoint=True', *iters], upstream, os.path.join(upstream, 'out-compare'))
    for dtype in cpu_dtypes.split(','):
        out = os.path.abspath(os.path.join(log_dir, f'out-cpu-{dtype}'))  # train.py runs in ROOT
        runs[f'this toolkit, {dtype}'] = ([sys.executable, 'train.py', 'config/train_shakespeare_char_cpu.py',
                                           f'--dtype={dtype}', f'--out_dir={out}', '--always_save_checkpoint=True',
                                           *iters], ROOT, out)
    results = {name: [] for name in runs}
    for r in range(rounds):  # interleaved, so slow spells of a shared machine hit every run alike
        for name, (cmd, cwd, out) in runs.items():
            fresh_out_dir(out)
            result = train_summary(*run(f"cpu-{name.replace(' ', '_').replace(',', '')}-{r}", cmd, cwd))
            result['whole_val'] = whole_split_val_loss(os.path.join(out, 'ckpt.pt'))
            results[name].append(result)
            print(f"round {r + 1}: {name}: {result['ms']:.2f} ms/iter, {result['total']:.1f} s, "
                  f"val {result['val']:.4f}, whole val split {result['whole_val']:.4f}", flush=True)
    keys = ('ms', 'total', 'val', 'whole_val')
    med = {name: {k: statistics.median(x[k] for x in res) for k in keys} for name, res in results.items()}
    base = med.get('upstream nanoGPT', RECORDED['cpu'])
    rows = [] if upstream else [['upstream nanoGPT (recorded)', f"{base['ms']:.1f}", f"{base['total']:.0f}",
                                 f"{base['val']:.3f}", '?', '1.00x', '1.00x']]
    for name, m in med.items():
        rows.append([name, f"{m['ms']:.1f}", f"{m['total']:.0f}", f"{m['val']:.3f}", f"{m['whole_val']:.3f}",
                     f"{base['ms'] / m['ms']:.2f}x", f"{base['total'] / m['total']:.2f}x"])
    table(f"CPU: config/train_shakespeare_char_cpu.py, {max_iters or 2000} iterations, gradients clipped at 1.0 "
          f"(medians of {rounds} run(s))",
          ['run', 'ms/iter', 'total s', 'val loss at end', 'whole val split', 'faster per iter', 'faster in total'], rows)


def attention_check():
    """sdpa_backend=auto against flash on config/train_shakespeare_char.py (dropout 0.2), the same seed: auto
    leaves out cuDNN's kernels, which would round that dropout (see README, GPU notes), so both should reach
    the same val loss, up to the non-determinism of the attention backward."""
    iters = [f'--max_iters={attention_check_iters}', f'--lr_decay_iters={attention_check_iters}',
             f'--eval_interval={attention_check_iters}', '--compile=False']
    vals = {}
    for backend in ('flash', 'auto'):
        text, _ = run(f'attention-{backend}', [sys.executable, 'train.py', 'config/train_shakespeare_char.py', *iters,
                                               f'--sdpa_backend={backend}', f'--out_dir={log_dir}/out-attention-{backend}'], ROOT)
        vals[backend] = train_summary(text, 0)['val']
    diff = abs(vals['flash'] - vals['auto'])
    print(f"attention check ({attention_check_iters} iterations, dropout 0.2): val loss with sdpa_backend=flash "
          f"{vals['flash']:.4f}, auto {vals['auto']:.4f}: {'the same' if diff <= 0.02 else 'DIFFERENT'} "
          f"(difference {diff:.4f})", flush=True)


def gpu_comparison():
    if attention_check_iters:
        attention_check()
    rows = []
    # upstream's bench.py does not clip gradients: neither does ours here
    bench = ['--batch_size=12', '--block_size=1024', '--real_data=False']
    ours, _ = run('bench-ours', [sys.executable, 'bench.py', *bench, '--dtype=bfloat16', '--compile=True',
                                 '--grad_clip=0'], ROOT)
    m = re.search(r'time per iteration: ([\d.]+)ms, MFU: (?:([\d.]+)%|n/a), (\d+) tokens/s', ours)  # n/a: no peak known
    ours_bench = {'ms': float(m.group(1)), 'mfu': float(m.group(2) or 'nan'), 'tokens': int(m.group(3))}
    ours_name = compiled('this toolkit', ours)
    print(f"bench.py, {ours_name}: {ours_bench['ms']:.2f} ms/iter, {ours_bench['tokens']} tokens/s",
          flush=True)  # each run's figures as it ends, kept if a later run fails
    base = RECORDED['bench']
    if upstream:
        text, _ = run('bench-upstream', [sys.executable, 'bench.py', '--real_data=False'], upstream)
        ms = float(re.findall(r'time per iteration: ([\d.]+)ms', text)[-1])
        base = {'ms': ms, 'tokens': 12 * 1024 / (ms / 1000), 'mfu': None}
    rows.append(['upstream nanoGPT' + ('' if upstream else ' (recorded)'), f"{base['ms']:.1f}", f"{base['tokens']:,.0f}",
                 f"{base['mfu']:.1f}%" if base['mfu'] else 'A100 peak', '1.00x'])
    rows.append([ours_name, f"{ours_bench['ms']:.1f}", f"{ours_bench['tokens']:,}", f"{ours_bench['mfu']:.1f}%",
                 f"{ours_bench['tokens'] / base['tokens']:.2f}x"])
    table("GPU: bench.py, GPT-2 124M, batch 12, block 1024, bfloat16, compiled, no gradient clipping (as upstream's)",
          ['run', 'ms/iter', 'tokens/s', 'MFU', 'tokens/s vs upstream'], rows)

    iters = [f'--max_iters={max_iters}', f'--lr_decay_iters={max_iters}'] if max_iters else []
    runs = {}
    if upstream:
        runs['upstream nanoGPT'] = ([sys.executable, 'train.py', 'config/train_shakespeare_char.py',
                                     '--out_dir=out-compare', *iters], upstream, os.path.join(upstream, 'out-compare'))
    for mode in e2e_compile_modes.split(','):
        out = os.path.abspath(os.path.join(log_dir, f'out-e2e-{mode}'))
        runs[f'this toolkit, compile_mode={mode}'] = ([sys.executable, 'train.py', 'config/train_shakespeare_char.py',
                                                       f'--compile_mode={mode}', f'--out_dir={out}', *iters], ROOT, out)
    results = {}
    for name, (cmd, cwd, out) in runs.items():
        fresh_out_dir(out)
        text, seconds = run(f"e2e-{name.split(',')[-1].strip().replace('=', '-').replace(' ', '_')}", cmd, cwd)
        label = compiled(name, text)
        results[label] = r = train_summary(text, seconds)
        print(f"{label}: {r['total']:.1f} s, {r['ms']:.2f} ms/iter, best val {r['best']:.4f}", flush=True)
    base = results.get('upstream nanoGPT', RECORDED['e2e'])
    rows = [] if upstream else [['upstream nanoGPT (recorded)', f"{base['total']:.0f}", f"{base['ms']:.1f}", '~40',
                                 f"{base['val']:.3f}", '1.00x']]
    for name, r in results.items():
        rows.append([name, f"{r['total']:.0f}", f"{r['ms']:.1f}", f"{r['eval']:.0f}" if r['eval'] is not None else '?',
                     f"{r['best']:.3f}", f"{base['total'] / r['total']:.2f}x"])
    table(f"GPU: config/train_shakespeare_char.py end to end, {max_iters or 5000} iterations, gradients clipped at 1.0",
          ['run', 'total s', 'ms/iter', 'eval s', 'best val loss', 'faster in total'], rows)


check_inputs()
if not upstream:
    print("no --upstream: upstream's rows are its figures recorded earlier, marked 'recorded'")
os.makedirs(log_dir, exist_ok=True)
prepare_data()
if device == 'cpu':
    cpu_comparison()
else:
    gpu_comparison()
