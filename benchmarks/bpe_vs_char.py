"""
Characters against a byte-level BPE trained on the text (data/prepare.py --tokenizer=bpe) at a few
vocabulary sizes, on tiny Shakespeare: each trained with the CPU recipe (config/speedrun_shakespeare_char_cpu.py)
for the same wall time, each scored in bits per byte on the same val text (benchmarks/evaluate.py; every
dataset is cut at the same character, data/prepare.py's 90%). Prints a markdown table.
$ python benchmarks/bpe_vs_char.py                                   # char, BPE of 512, 1024 and 2048 tokens
$ python benchmarks/bpe_vs_char.py --vocab_sizes=512,1024 --rounds=3

The same wall time: the character run trains the recipe's iterations; bench.py measures each
dataset's milliseconds per iteration with the recipe's model (a larger vocabulary costs more per
iteration, in its embedding and head), and each BPE run gets the iterations that take the character
run's time, its schedule (warmup, cooldown) stretched in proportion. The table shows each whole
training command's time, so that a reader sees the budgets held. Time it on a quiet machine.
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
from nanogpt.data import load_meta  # noqa: E402

# -----------------------------------------------------------------------------
vocab_sizes = '512,1024,2048'  # the BPE vocabularies to train, each against characters
iters = 0  # the character run's iterations, 0 for the recipe's own; the BPE runs get the same time
rounds = 1  # each run this many times (seeds 1337, 1338, ...), interleaved; medians in the table
bench_steps = 30  # timed steps of bench.py per dataset, after 10 untimed ones
bench_rounds = 3  # bench.py runs per dataset, interleaved; the fastest counts
log_dir = 'bench_results/bpe_vs_char'  # the datasets, checkpoints and every run's output go here
# -----------------------------------------------------------------------------
configure(globals(), positive_ints=('rounds', 'bench_steps', 'bench_rounds'))
RECIPE = 'config/speedrun_shakespeare_char_cpu.py'
from configurator import run_config_file  # noqa: E402
SCHEDULE = run_config_file(os.path.join(ROOT, RECIPE), {})[1]  # the recipe's iterations, warmup and cooldown
iters = iters or SCHEDULE['max_iters']
TEXT = os.path.join(ROOT, 'data', 'shakespeare_char', 'input.txt')
# the recipe's model and step for bench.py, which reads no config file of train.py's
BENCH_ARGS = ['--device=cpu', '--dtype=fast', '--compile=False', '--batch_size=12', '--block_size=64',
              '--n_layer=4', '--n_head=4', '--n_embd=128', '--rope=True', '--qk_norm=True', '--mlp_activation=relu2',
              '--tie_weights=False', '--optimizer=muon', '--burnin=10', f'--num_steps={bench_steps}']
try:
    sizes = [int(v) for v in vocab_sizes.split(',')]
except ValueError:
    raise ScriptError(f"vocab_sizes={vocab_sizes!r}: give sizes separated by commas, e.g. 512,1024")
if not os.path.isfile(TEXT):
    raise ScriptError(f"{TEXT} is missing (the project ships it: git checkout -- data/shakespeare_char/input.txt)")
os.makedirs(log_dir, exist_ok=True)


def run(name, *args):
    """python args in the project, its output kept in log_dir/name.log; returns (output, wall seconds)."""
    t0 = time.time()
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True)
    seconds = time.time() - t0
    with open(os.path.join(log_dir, f'{name}.log'), 'w', encoding='utf-8') as log:
        log.write(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise ScriptError(f"{name} failed ({' '.join(args)}); see {log_dir}/{name}.log")
    return proc.stdout, seconds


# the datasets, all cut at the same character by data/prepare.py
runs = {'char': os.path.join(log_dir, 'char')}
runs.update({f'bpe{v}': os.path.join(log_dir, f'bpe{v}') for v in sizes})
for name, data in runs.items():
    args = ['--tokenizer=char'] if name == 'char' else ['--tokenizer=bpe', f'--vocab_size={name[3:]}']
    run(f'prepare-{name}', 'data/prepare.py', f'--input={TEXT}', f'--dataset={os.path.abspath(data)}', *args)

# the iterations that take the character run's time: each dataset's step timed bench_rounds times,
# interleaved, its fastest kept (a spell of load on a shared machine only ever slows a step down)
ms = {name: [] for name in runs}
for r in range(bench_rounds):
    for name, data in runs.items():
        out, _ = run(f'bench-{name}-{r}', 'bench.py', f'--dataset={os.path.abspath(data)}', *BENCH_ARGS)
        ms[name].append(float(re.search(r'time per iteration: ([\d.]+)ms', out).group(1)))
ms = {name: min(times) for name, times in ms.items()}
steps = {name: max(1, round(iters * ms['char'] / ms[name])) for name in runs}

results = {name: [] for name in runs}  # (whole command seconds, val loss, bits per byte)
for r in range(rounds):
    for name, data in runs.items():
        n, out_dir = steps[name], os.path.join(log_dir, f'out-{name}-{r}')
        if os.path.isdir(out_dir):
            shutil.rmtree(out_dir)  # this script's own run folder from an earlier call
        stretch = n / SCHEDULE['max_iters']  # the recipe's warmup and cooldown, in proportion
        _, seconds = run(f'train-{name}-{r}', 'train.py', RECIPE, f'--dataset={os.path.abspath(data)}',
                         f'--out_dir={out_dir}', f'--seed={1337 + r}', f'--max_iters={n}', f'--lr_decay_iters={n}',
                         f'--eval_interval={n}', f"--warmup_iters={round(SCHEDULE['warmup_iters'] * stretch)}",
                         f"--cooldown_iters={round(SCHEDULE['cooldown_iters'] * stretch)}")
        out, _ = run(f'evaluate-{name}-{r}', 'benchmarks/evaluate.py', f'--out_dir={out_dir}', '--device=cpu')
        m = re.search(r'val loss ([\d.]+) over [\d,]+ tokens, ([\d.]+) bits per byte', out)
        results[name].append((seconds, float(m.group(1)), float(m.group(2))))

print(f"tiny Shakespeare, {RECIPE}, the same wall time per run; medians of {rounds} round(s)")
print("| tokenizer | vocab | ms/iter | iterations | whole command | val loss (per token) | bits per byte |")
print("|---|---|---|---|---|---|---|")
medians = {name: [statistics.median(v) for v in zip(*rows)] for name, rows in results.items()}
for name in runs:
    seconds, loss, bpb = medians[name]
    vocab = load_meta(runs[name])['vocab_size']
    print(f"| {'characters' if name == 'char' else 'BPE'} | {vocab} | {ms[name]:.1f} | {steps[name]} | {seconds:.1f} s "
          f"| {loss:.4f} | {bpb:.4f} |")
best = min(runs, key=lambda name: medians[name][2])
if off := [name for name in runs if abs(medians[name][0] / medians['char'][0] - 1) > 0.1]:
    print(f"warning: the whole commands of {', '.join(off)} took more than 10% more or less than the character "
          f"run's: the budgets were not held (a busy machine, or a step timed in a slow spell); run it again")
print(f"best in bits per byte: {best}, {medians[best][2]:.4f} against characters' {medians['char'][2]:.4f} "
      f"({(medians[best][2] - medians['char'][2]) / medians['char'][2] * 100:+.1f}%)")
