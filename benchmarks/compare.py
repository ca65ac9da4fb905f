"""
Side-by-side speed of this toolkit and upstream nanoGPT, printed as a table.

CPU: config/train_shakespeare_char_cpu.py end to end (2000 iterations with their evaluations), in
float32 (the default) and bfloat16 (opt-in): ms per iteration, total wall time, val loss at the end,
and each final model's loss on the whole val split.
$ python benchmarks/compare.py --device=cpu [--upstream=../nanoGPT] [--rounds=3]

Time to the same loss on the CPU: config/speedrun_shakespeare_char_cpu.py against upstream's CPU run,
both whole commands, their final models scored on the whole val split; with --ablation, the recipe
again with each technique switched in turn (off where the recipe has it, on where it left it out);
with --plot, val loss against wall time; with --previous, the speedrun config of an earlier checkout of this toolkit
as one more row. Each round gives our runs their own seed; the recipe's rounds are checked against the target, the
whole-split loss of upstream's own run (1.898). On a CPU with native bfloat16, ONEDNN_MAX_CPU_ISA=AVX2 (with
ATEN_CPU_CAPABILITY=avx2) makes every run behave as on a CPU without it.
$ python benchmarks/compare.py --device=cpu --speedrun=True --upstream=../nanoGPT --rounds=3 [--ablation=all] [--plot=docs/speedrun_cpu.png] [--previous=../old]

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
speedrun = False  # CPU: time to the same loss, config/speedrun_shakespeare_char_cpu.py against upstream's CPU run
ablation = ''  # with speedrun: the recipe again with each of these techniques switched in turn: 'all', or e.g. 'rope,optimizer'
previous = ''  # with speedrun: a checkout of this toolkit at an earlier commit, whose speedrun config runs as one more row
plot = ''  # with speedrun: where to draw val loss against wall time (a .png), '' for no picture
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
SPEEDRUN_CPU = 'config/speedrun_shakespeare_char_cpu.py'
SPEEDRUN_TARGET = 1.898  # upstream's own CPU run, its final model scored on the whole val split: the loss to reach
# each technique of the modern recipe: the value that turns it off (upstream's), and one that turns it on
TECHNIQUES = {'rope': (False, True), 'qk_norm': (False, True), 'mlp_activation': ('gelu', 'relu2'),
              'tie_weights': (True, False), 'logit_softcap': (0.0, 15.0), 'zero_init_proj': (False, True),
              'optimizer': ('adamw', 'muon'), 'dtype': ('float32', 'bfloat16')}


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
    unknown = set(ablation.split(',')) - set(TECHNIQUES) - {'', 'all'}
    if unknown:
        raise ScriptError(f"ablation: no technique {', '.join(sorted(unknown))}; use 'all' or some of {', '.join(TECHNIQUES)}")
    if (speedrun or ablation or plot or previous) and (device != 'cpu' or not upstream):
        raise ScriptError("speedrun, ablation, plot and previous compare with upstream on the CPU: give --device=cpu "
                          "--speedrun=True --upstream=PATH")
    if previous and not os.path.isfile(os.path.join(previous, SPEEDRUN_CPU)):
        raise ScriptError(f"previous={previous!r} is not a checkout of this toolkit with {SPEEDRUN_CPU}")
    if not os.path.exists(os.path.join(DATA, 'train.bin')) and not os.path.exists(os.path.join(DATA, 'input.txt')):
        raise ScriptError(f"{os.path.join(DATA, 'input.txt')} is missing (the project ships it: git checkout -- "
                          f"data/shakespeare_char/input.txt), and the data is not prepared either")


def prepare_data():
    for checkout in (ROOT, previous):  # an earlier checkout of this toolkit prepares its own, as it knows how
        if checkout and not os.path.exists(os.path.join(checkout, 'data', 'shakespeare_char', 'train.bin')):
            run('prepare', [sys.executable, 'data/shakespeare_char/prepare.py'], checkout)
    if upstream:
        target = os.path.join(upstream, 'data', 'shakespeare_char')
        os.makedirs(target, exist_ok=True)
        for name in ('train.bin', 'val.bin', 'meta.pkl'):
            shutil.copy(os.path.join(DATA, name), target)


def run(name, cmd, cwd, timeline=None):
    """Runs cmd, keeps its output in log_dir/name.log; returns (stdout and stderr, wall seconds). Where
    timeline is a list, (seconds since the start, val loss) is appended to it for each step line."""
    t0 = time.time()
    with open(os.path.join(log_dir, f'{name}.log'), 'w') as log:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = []
        for line in proc.stdout:  # read as it comes, so each line's time is when the run printed it
            lines.append(line)
            log.write(line)
            m = re.match(r'^step \d+: train loss [\d.]+, val loss ([\d.]+)', line)
            if m and timeline is not None:
                timeline.append((time.time() - t0, float(m.group(1))))
        proc.wait()
    seconds = time.time() - t0
    if proc.returncode != 0:
        raise ScriptError(f"{name} failed ({' '.join(cmd)}); see {log_dir}/{name}.log")
    return ''.join(lines), seconds


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


def whole_split_val_loss(out_dir):
    """Loss of the model in out_dir's checkpoint over every token of the val split (nanogpt.evaluation):
    the printed val loss averages 20 random batches, which differ from run to run by about +-0.013."""
    from contextlib import nullcontext
    from nanogpt.checkpoint import init_model
    from nanogpt.data import load_meta, open_split
    from nanogpt.evaluation import whole_split_loss
    model = init_model('resume', out_dir, dropout=0.0)[0].eval()
    block, vocab_size = model.config.block_size, model.config.vocab_size
    data = open_split(DATA, 'val', load_meta(DATA), block, vocab_size)
    return whole_split_loss(model, data, block, 64, 'cpu', nullcontext())[0]


def table(title, header, rows):
    print(f"\n{title}")
    print('| ' + ' | '.join(header) + ' |')
    print('|' + '---|' * len(header))
    for row in rows:
        print('| ' + ' | '.join(row) + ' |')


def cpu_comparison():
    """Our runs against upstream's CPU run, interleaved round by round: with speedrun, the recipe (and
    its ablations) for time to the same loss; otherwise train_shakespeare_char_cpu.py per dtype."""
    # a shorter run is evaluated at its end as well, as upstream does only at multiples of eval_interval
    iters = [f'--max_iters={max_iters}', f'--lr_decay_iters={max_iters}', f'--eval_interval={max_iters}'] if max_iters else []
    if speedrun:
        ours = {'this toolkit, speedrun recipe': [SPEEDRUN_CPU]}
        if ablation:
            from configurator import run_config_file
            recipe = run_config_file(os.path.join(ROOT, SPEEDRUN_CPU), {})[1]
            for key, (off, on) in TECHNIQUES.items():
                if ablation == 'all' or key in ablation.split(','):  # the technique turned off, or on where the recipe left it out
                    if recipe.get(key, off) != off:
                        ours[f'recipe without {key}={recipe[key]!r}'] = [SPEEDRUN_CPU, f'--{key}={off}']
                    else:
                        ours[f'recipe with {key}={on!r}'] = [SPEEDRUN_CPU, f'--{key}={on}']
    else:
        ours = {f'this toolkit, {dtype}': ['config/train_shakespeare_char_cpu.py', f'--dtype={dtype}']
                for dtype in cpu_dtypes.split(',')}
    runs = {}
    if upstream:
        # always_save_checkpoint: the checkpoint then holds the final model, for the whole-split loss
        runs['upstream nanoGPT'] = ([sys.executable, 'train.py', *UPSTREAM_CPU_ARGS, '--out_dir=out-compare',
                                     '--always_save_checkpoint=True', *iters], upstream, os.path.join(upstream, 'out-compare'))
    if previous:  # the earlier commit's recipe, run in its own checkout, its checkpoint scored here
        out = os.path.abspath(os.path.join(log_dir, 'out-cpu-previous'))
        runs[f'previous recipe ({previous})'] = ([sys.executable, 'train.py', SPEEDRUN_CPU, f'--out_dir={out}',
                                                   '--always_save_checkpoint=True', *iters], previous, out)
    for i, (name, args) in enumerate(ours.items()):
        out = os.path.abspath(os.path.join(log_dir, f'out-cpu-{i}'))  # train.py runs in ROOT
        runs[name] = ([sys.executable, 'train.py', *args, f'--out_dir={out}', '--always_save_checkpoint=True', *iters],
                      ROOT, out)
    results = {name: [] for name in runs}
    timelines = {}
    for r in range(rounds):  # interleaved, so slow spells of a shared machine hit every run alike
        for i, (name, (cmd, cwd, out)) in enumerate(runs.items()):
            fresh_out_dir(out)
            if speedrun and cwd != upstream:  # a seed per round: the loss of a recipe varies by about 0.016 with it
                cmd = cmd + [f'--seed={1337 + r}']
            timeline = timelines.setdefault(name, []) if r == 0 else None
            result = train_summary(*run(f"cpu-{i}-{r}", cmd, cwd, timeline))
            result['whole_val'] = whole_split_val_loss(out)
            results[name].append(result)
            print(f"round {r + 1}: {name}: {result['ms']:.2f} ms/iter, {result['total']:.1f} s, "
                  f"val {result['val']:.4f}, whole val split {result['whole_val']:.4f}", flush=True)
    keys = ('ms', 'total', 'val', 'whole_val')
    med = {name: {k: statistics.median(x[k] for x in res) for k in keys} for name, res in results.items()}
    base = med.get('upstream nanoGPT', RECORDED['cpu'])
    if speedrun:
        recipe = med['this toolkit, speedrun recipe']
        rows = [[name, f"{m['total']:.1f}", f"{m['whole_val']:.4f}", f"{base['total'] / m['total']:.2f}x",
                 f"{m['whole_val'] - recipe['whole_val']:+.4f}", f"{m['total'] - recipe['total']:+.1f}"]
                for name, m in med.items()]
        table(f"CPU: time to the same loss, {SPEEDRUN_CPU} against upstream's README CPU run (medians of {rounds} "
              f"round(s), ours with seeds 1337 to {1336 + rounds}; whole val split: every token of val.bin)",
              ['run', 'total s', 'whole val split', 'faster in total', 'loss vs recipe', 's vs recipe'], rows)
        table("Each round", ['run', 'round', 'seed', 'total s', 'whole val split', 'faster than upstream'],
              [[name, str(r + 1), '-' if name == 'upstream nanoGPT' else str(1337 + r), f"{x['total']:.1f}",
                f"{x['whole_val']:.4f}", f"{base['total'] / x['total']:.2f}x"]
               for name, res in results.items() for r, x in enumerate(res)])
        reached = sum(x['whole_val'] <= SPEEDRUN_TARGET for x in results['this toolkit, speedrun recipe'])
        print(f"\ntarget: a whole-split val loss of at most {SPEEDRUN_TARGET} (upstream's own): the recipe reached it in "
              f"{reached} of {rounds} round(s)")
        if plot:  # the recipe once more, evaluated every 25 iterations so that its curve shows (slower for it)
            out = os.path.abspath(os.path.join(log_dir, 'out-cpu-curve'))
            fresh_out_dir(out)
            curve = []
            run('cpu-curve', [sys.executable, 'train.py', SPEEDRUN_CPU, '--eval_interval=25', f'--out_dir={out}', *iters],
                ROOT, curve)
            draw_timelines({'upstream nanoGPT (its README CPU run)': timelines['upstream nanoGPT'],
                            'this toolkit, speedrun recipe (evaluated every 25 iterations for this picture)': curve},
                           plot)
        return
    rows = [] if upstream else [['upstream nanoGPT (recorded)', f"{base['ms']:.1f}", f"{base['total']:.0f}",
                                 f"{base['val']:.3f}", '?', '1.00x', '1.00x']]
    for name, m in med.items():
        rows.append([name, f"{m['ms']:.1f}", f"{m['total']:.0f}", f"{m['val']:.3f}", f"{m['whole_val']:.3f}",
                     f"{base['ms'] / m['ms']:.2f}x", f"{base['total'] / m['total']:.2f}x"])
    table(f"CPU: config/train_shakespeare_char_cpu.py, {max_iters or 2000} iterations, gradients clipped at 1.0 "
          f"(medians of {rounds} run(s))",
          ['run', 'ms/iter', 'total s', 'val loss at end', 'whole val split', 'faster per iter', 'faster in total'], rows)


def draw_timelines(timelines, path):
    """Val loss (as each run printed it) against seconds since the command started, one line per run."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, points in timelines.items():
        ax.plot(*zip(*points), 'o-', label=name, markersize=3)
    ax.set_xlabel('wall time since the command started (s)')
    ax.set_ylabel('val loss (printed)')
    ax.set_ylim(top=2.6)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title('tiny Shakespeare (characters) on a 2-core CPU')
    fig.tight_layout()
    fig.savefig(path)
    print(f"wrote {path}")


def attention_check():
    """sdpa_backend=auto against flash on config/train_shakespeare_char.py (dropout 0.2), the same seed: auto
    leaves out cuDNN's kernels, which would round that dropout (see docs/performance.md, GPU notes), so both should reach
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
if device == 'cpu':  # CPU figures depend on these: bfloat16 is several times slower where it is emulated
    from nanogpt.device import bfloat16_reason
    import torch
    print(f"cpu: {bfloat16_reason('cpu')}; torch {torch.__version__}, kernels {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} threads")
if not upstream:
    print("no --upstream: upstream's rows are its figures recorded earlier, marked 'recorded'")
os.makedirs(log_dir, exist_ok=True)
prepare_data()
if device == 'cpu':
    cpu_comparison()
else:
    gpu_comparison()
