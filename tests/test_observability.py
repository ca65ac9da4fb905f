"""What a run leaves to look at: metrics.jsonl (appended across resumes, each iteration once), the
wandb offline run, and plot.py's picture."""

import json
import re
import shutil

import pytest

from conftest import (ITER_LINE, STEP_LINE, TINY, assert_printed_mfu, flops_per_token, run_script, script_env,
                      upstream_lr)
from nanogpt.files import read_metrics

TRAIN = ['train.py', 'config/train_shakespeare_char.py', *TINY]
TOKENS_PER_ITER = 4 * 32  # batch_size * block_size of TINY, gradient_accumulation_steps=1 in the config
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def iteration_rows(rows):
    return [r for r in rows if 'loss' in r]


def eval_rows(rows):
    return [r for r in rows if 'val_loss' in r]


def printed(stdout, pattern):
    return [m for m in map(pattern.match, stdout.splitlines()) if m]


def wandb_records(path):
    """The records of a .wandb file. wandb 0.31 has no Python reader for it, so this is the format
    spelled out: a 7-byte header (':W&B', magic, version), then a LevelDB log: 32 KiB blocks of
    chunks, each a 7-byte header (crc, length, type) and data; types 1 (full) and 4 (last) end a
    record, which is a serialised wandb Record."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b':W&B'
    records, pos, pending = [], 7, b''
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], 'little'), data[pos + 6]
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b''
    return records


@pytest.fixture(scope='module')
def run12(project, tmp_path_factory):
    """12 iterations, logged every 2, evaluated every 5, logged to wandb offline as well. A peak is
    given so that MFU has values (from the 7th iteration of the process on) as well as None before."""
    base = tmp_path_factory.mktemp('run12')
    (base / 'wandb_dir').mkdir()
    env = script_env(WANDB_MODE='offline', WANDB_DIR=str(base / 'wandb_dir'), WANDB_SILENT='true')
    proc = run_script(project, *TRAIN, f'--out_dir={base / "out"}', '--max_iters=12', '--eval_interval=5',
                      '--log_interval=2', '--peak_flops=1e12', '--wandb_log=True', '--wandb_project=obs-test',
                      '--wandb_run_name=tiny', env=env)
    return base / 'out', proc.stdout, base / 'wandb_dir'


def test_metrics_rows_match_the_log(run12):
    out, stdout, _ = run12
    rows = read_metrics(out / 'metrics.jsonl')
    its, evals = iteration_rows(rows), eval_rows(rows)
    assert len(its) + len(evals) == len(rows)
    assert [r['iter'] for r in rows] == sorted(r['iter'] for r in rows)  # appended in order

    assert [r['iter'] for r in its] == [0, 2, 4, 6, 8, 10]
    assert all(set(r) == {'iter', 'loss', 'lr', 'time_ms', 'mfu', 'tokens'} for r in its)
    assert [r['tokens'] for r in its] == [(r['iter'] + 1) * TOKENS_PER_ITER for r in its]  # seen so far
    assert [r['lr'] for r in its] == [upstream_lr(r['iter'], 1e-3, 5, 5000, 1e-4) for r in its]
    lines = printed(stdout, ITER_LINE)
    assert [int(m.group(1)) for m in lines] == [r['iter'] for r in its]
    for m, r in zip(lines, its):
        assert float(m.group(2)) == round(r['loss'], 4)
        assert m.group(3) == f"{r['time_ms']:.2f}"
        assert m.group(4) == ('n/a' if r['mfu'] is None else f"{r['mfu'] * 100:.2f}%")
    assert [r['mfu'] is None for r in its] == [True, True, True, False, False, False]

    assert [r['iter'] for r in evals] == [0, 5, 10, 12]
    assert all(set(r) >= {'iter', 'train_loss', 'val_loss', 'eval_s'} and r['eval_s'] >= 0 for r in evals)
    steps = printed(stdout, STEP_LINE)
    assert [int(m.group(1)) for m in steps] == [r['iter'] for r in evals]
    for m, r in zip(steps, evals):
        assert (float(m.group(2)), float(m.group(3))) == (round(r['train_loss'], 4), round(r['val_loss'], 4))


def test_wandb_offline_run(run12):
    out, _, wandb_dir = run12
    run_files = list(wandb_dir.glob('wandb/offline-run-*/run-*.wandb'))
    assert len(run_files) == 1
    records = wandb_records(run_files[0])

    runs = [r.run for r in records if r.WhichOneof('record_type') == 'run']
    assert len(runs) == 1 and (runs[0].project, runs[0].display_name) == ('obs-test', 'tiny')
    config = {item.key: item.value_json for item in runs[0].config.update}
    # batch_size 4 from the command line, over the config file's 64
    assert (config['batch_size'], config['max_iters'], config['wandb_log']) == ('4', '12', 'true')

    # the history: one entry per step, an iteration's and an evaluation's rows of the same step merged
    history = {r.history.step.num: {item.key or '/'.join(item.nested_key): item.value_json for item in r.history.item}
               for r in records if r.WhichOneof('record_type') == 'history'}
    assert sorted(history) == [0, 2, 4, 5, 6, 8, 10, 12]
    rows = read_metrics(out / 'metrics.jsonl')
    for r in iteration_rows(rows):
        assert float(history[r['iter']]['iter/loss']) == r['loss']
    for r in eval_rows(rows):
        assert float(history[r['iter']]['val/loss']) == r['val_loss']


def test_printed_time_and_mfu(project, tmp_path):
    """The numbers of the log against the model's shape and the run's own evaluations: MFU is
    flops_per_token x tokens / time / peak (smoothed as upstream does), an evaluation's time stays
    out of the next iteration's, and the evaluation's own time is printed after the losses."""
    peak = 1e10  # the tiny model's MFU is then tens of percent, four printed digits
    # evaluation is 400 forward passes, tens of times an iteration of 2 micro-steps
    proc = run_script(project, *TRAIN, f'--out_dir={tmp_path}', '--max_iters=12', '--eval_interval=6',
                      '--eval_iters=200', '--gradient_accumulation_steps=2', f'--peak_flops={peak}')
    iters = printed(proc.stdout, ITER_LINE)
    assert [int(m.group(1)) for m in iters] == list(range(12))
    assert_printed_mfu(iters, flops_per_token(2, 2, 32, 32, 65) * 2 * TOKENS_PER_ITER, peak)

    steps = [line for line in proc.stdout.splitlines() if line.startswith('step ')]
    assert len(steps) == 3 and all(re.search(r', eval \d+\.\d{2}s$', line) for line in steps), steps
    eval_ms = float(re.search(r'eval (\d+\.\d{2})s$', steps[1]).group(1)) * 1000  # at step 6
    times = sorted(float(m.group(3)) for m in iters)
    median = times[len(times) // 2]
    assert eval_ms > 10 * median  # a slow evaluation, so that the check below means something
    assert float(iters[6].group(3)) < eval_ms / 2, (iters[6].group(0), steps[1])  # iteration 6 ran right after it


def test_resume_keeps_each_iteration_once(project, tmp_path):
    out = tmp_path / 'out'
    metrics = out / 'metrics.jsonl'
    args = [*TRAIN, f'--out_dir={out}', '--eval_interval=5', '--always_save_checkpoint=True', '--peak_flops=1e10']
    run_script(project, *args, '--max_iters=10')
    shutil.copy(out / 'ckpt.pt', tmp_path / 'ckpt10.pt')
    before = metrics.read_text()
    first = run_script(project, *args, '--max_iters=20', '--init_from=resume')
    assert metrics.read_text().startswith(before)  # the first run's rows stay as they were

    rows = read_metrics(metrics)
    assert [r['iter'] for r in iteration_rows(rows)] == list(range(20))
    assert [r['iter'] for r in eval_rows(rows)] == [0, 5, 10, 15, 20]  # 10 evaluated once, before the stop
    resumed = [r for r in iteration_rows(rows) if r['iter'] >= 10]
    assert [int(m.group(1)) for m in printed(first.stdout, ITER_LINE)] == list(range(10, 20))
    assert [f"{r['loss']:.4f}" for r in resumed] == [m.group(2) for m in printed(first.stdout, ITER_LINE)]
    assert resumed[0]['tokens'] == 11 * TOKENS_PER_ITER  # counting on from the checkpoint
    assert [r['mfu'] is None for r in resumed] == [True] * 5 + [False] * 5  # the first 5 of each process

    # resumed from a checkpoint older than the last rows: the rows of the repeated iterations go
    shutil.copy(tmp_path / 'ckpt10.pt', out / 'ckpt.pt')
    again = run_script(project, *args, '--max_iters=20', '--init_from=resume')
    rows = read_metrics(metrics)
    assert [r['iter'] for r in iteration_rows(rows)] == list(range(20))
    assert [r['iter'] for r in eval_rows(rows)] == [0, 5, 10, 15, 20]
    assert metrics.read_text().startswith(before)
    # the rows from 10 on are the last run's: its printed times, not the first resume's
    repeated = [r for r in iteration_rows(rows) if r['iter'] >= 10]
    times_again = [m.group(3) for m in printed(again.stdout, ITER_LINE)]
    assert [f"{r['time_ms']:.2f}" for r in repeated] == times_again
    assert times_again != [m.group(3) for m in printed(first.stdout, ITER_LINE)]


def test_plot_writes_a_png(project, run12, tmp_path):
    out, _, _ = run12
    proc = run_script(project, 'plot.py', f'--out_dir={out}')
    assert proc.stdout.splitlines()[-1] == str(out / 'loss.png')
    png = (out / 'loss.png').read_bytes()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 10_000
    width, height = int.from_bytes(png[16:20], 'big'), int.from_bytes(png[20:24], 'big')  # IHDR
    assert width >= 400 and height >= 400

    # a run without MFU values, to a chosen file
    rows = [r for r in read_metrics(out / 'metrics.jsonl') if r.get('mfu') is None]
    (tmp_path / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
    target = tmp_path / 'plots.png'
    proc = run_script(project, 'plot.py', f'--out_dir={tmp_path}', f'--output={target}')
    assert proc.stdout.splitlines()[-1] == str(target) and target.read_bytes().startswith(PNG_SIGNATURE)


def test_plot_errors(project, tmp_path):
    def error_of(*args, env=None):
        proc = run_script(project, 'plot.py', *args, env=env, check=False)
        assert proc.returncode != 0 and 'Traceback' not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
        return proc.stderr.strip()

    assert error_of(f'--out_dir={tmp_path}') == \
        f"error: no metrics at {tmp_path / 'metrics.jsonl'}; train with --out_dir={tmp_path} first"
    (tmp_path / 'metrics.jsonl').write_text('')
    assert 'has no rows yet' in error_of(f'--out_dir={tmp_path}')

    # without matplotlib: a package of that name that fails to import stands in for its absence
    fake = tmp_path / 'no_matplotlib' / 'matplotlib'
    fake.mkdir(parents=True)
    (fake / '__init__.py').write_text("raise ImportError('matplotlib is not installed')\n")
    assert error_of(f'--out_dir={tmp_path}', env=script_env(PYTHONPATH=str(fake.parent))) == \
        "error: plot.py needs matplotlib: pip install matplotlib"
    assert not (tmp_path / 'loss.png').exists()
