"""Never lose a run: exact resume, kills, signals and NaNs (bad inputs: test_safety.py)."""

import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import TINY, iter_lines, run_script, script_env

TRAIN = ['train.py', 'config/train_shakespeare_char.py', *TINY]


def losses_by_iter(stdout):
    return {int(m.group(1)): m.group(2) for m in iter_lines(stdout)}


def test_resume_is_exact(project, tmp_path):
    common = [*TRAIN, '--dropout=0.1', '--eval_interval=10', '--lr_decay_iters=40', '--always_save_checkpoint=True']
    straight = run_script(project, *common, f'--out_dir={tmp_path}/a', '--max_iters=40').stdout
    first = run_script(project, *common, f'--out_dir={tmp_path}/b', '--max_iters=20').stdout
    second = run_script(project, *common, f'--out_dir={tmp_path}/b', '--max_iters=40', '--init_from=resume').stdout
    a, b = losses_by_iter(straight), losses_by_iter(first)
    b.update(losses_by_iter(second))
    assert len(a) == 40 and a == b  # line by line, the printed losses are identical
    def eval_losses(stdout):  # the step lines without their timing
        return [l.split(', eval')[0] for l in stdout.splitlines() if l.startswith('step ')]
    assert [s.split(':')[0] for s in eval_losses(second)] == ['step 30', 'step 40']  # no re-evaluation at 20
    assert eval_losses(second) == eval_losses(straight)[-2:]


def test_best_val_loss_is_never_overwritten_by_a_worse_one(project, tmp_path):
    out = tmp_path / 'out'
    proc = run_script(project, *TRAIN, f'--out_dir={out}', '--max_iters=20', '--eval_interval=10',
                      '--always_save_checkpoint=True', '--learning_rate=3e-2', '--decay_lr=False')
    vals = [float(l.split('val loss ')[1].split(',')[0]) for l in proc.stdout.splitlines() if l.startswith('step ')]
    ckpt = torch.load(out / 'ckpt.pt', map_location='cpu', weights_only=True)
    assert ckpt['best_val_loss'] == pytest.approx(min(vals), abs=1e-4)


def test_checkpoint_only_when_val_loss_improves(project, tmp_path):
    """always_save_checkpoint=False, the Shakespeare configs' setting: an evaluation writes a
    checkpoint when its val loss beats the best so far (the resumed run's too), and only then."""
    out = tmp_path / 'out'
    args = [*TRAIN, f'--out_dir={out}', '--eval_interval=10', '--always_save_checkpoint=False']

    def evaluations_and_saves(stdout):
        return [line.split(':')[0] if line.startswith('step ') else line.split(' to ')[0]
                for line in stdout.splitlines() if line.startswith(('step ', 'saved checkpoint'))]

    proc = run_script(project, *args, '--max_iters=20')
    vals = [float(line.split('val loss ')[1].split(',')[0]) for line in proc.stdout.splitlines() if line.startswith('step ')]
    assert vals[0] > vals[1] > vals[2]  # it learns: each evaluation improves, each is saved (iteration 0's never)
    assert evaluations_and_saves(proc.stdout) == ['step 0', 'step 10', 'saved checkpoint', 'step 20', 'saved checkpoint']
    ckpt = torch.load(out / 'ckpt.pt', map_location='cpu', weights_only=True)
    assert ckpt['iter_num'] == 20 and ckpt['best_val_loss'] == pytest.approx(vals[2], abs=1e-4)
    before = (out / 'ckpt.pt').read_bytes(), (out / 'ckpt.pt').stat().st_mtime_ns

    # a learning rate of 1 wrecks the model: the val loss at 30 is far worse than the best, so no save
    proc = run_script(project, *args, '--max_iters=30', '--init_from=resume', '--learning_rate=1.0', '--decay_lr=False')
    worse = float(proc.stdout.split('step 30: train loss ')[1].split('val loss ')[1].split(',')[0])
    assert worse > vals[2] + 1
    assert evaluations_and_saves(proc.stdout) == ['step 30']
    assert ((out / 'ckpt.pt').read_bytes(), (out / 'ckpt.pt').stat().st_mtime_ns) == before


def start_training(project, out, *extra):
    return subprocess.Popen([sys.executable, *TRAIN, f'--out_dir={out}', *extra], cwd=project, env=script_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_line(proc, prefix):
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(prefix):
            return lines
    raise AssertionError(f"no line starting with {prefix!r}: {''.join(lines)[-2000:]} {proc.stderr.read()[-2000:]}")


def test_kill_9_at_random_moments_leaves_a_loadable_checkpoint(project, tmp_path):
    from nanogpt.checkpoint import load_checkpoint
    rng = random.Random(0)
    out = tmp_path / 'out'
    for attempt in range(3):
        proc = start_training(project, out, '--max_iters=100000', '--eval_interval=2', '--eval_iters=1',
                              '--always_save_checkpoint=True', *(['--init_from=resume'] if attempt else []))
        wait_for_line(proc, 'saved checkpoint')
        time.sleep(rng.uniform(0.0, 0.4))
        proc.kill()
        proc.wait()
        ckpt = load_checkpoint(str(out / 'ckpt.pt'))
        assert ckpt['iter_num'] > 0
        assert {p.name for p in out.iterdir() if p.name.startswith('ckpt')} <= {'ckpt.pt', 'ckpt.pt.tmp'}
    proc = run_script(project, *TRAIN, f'--out_dir={out}', f'--max_iters={ckpt["iter_num"] + 3}', '--eval_interval=2',
                      '--init_from=resume', '--always_save_checkpoint=True')
    assert min(losses_by_iter(proc.stdout)) == ckpt['iter_num']
    assert [p.name for p in out.iterdir() if p.name.startswith('ckpt')] == ['ckpt.pt']  # the leftover is replaced


def test_sigterm_writes_a_resumable_checkpoint(project, tmp_path):
    out = tmp_path / 'out'
    proc = start_training(project, out, '--max_iters=100000', '--eval_interval=1000')
    wait_for_line(proc, 'iter 5:')
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    saved = [l for l in stdout.splitlines() if l.startswith('saved checkpoint at iteration')]
    assert len(saved) == 1 and '--init_from=resume' in saved[0]
    n = int(saved[0].split('iteration ')[1].split()[0])
    assert torch.load(out / 'ckpt.pt', map_location='cpu', weights_only=True)['iter_num'] == n
    resumed = run_script(project, *TRAIN, f'--out_dir={out}', f'--max_iters={n + 2}', '--eval_interval=1000',
                         '--init_from=resume')
    assert sorted(losses_by_iter(resumed.stdout)) == [n, n + 1]


def test_second_ctrl_c_exits_at_once(project, tmp_path):
    out = tmp_path / 'out'
    # the first Ctrl-C right after an iteration's log line lands as the next iteration starts; the second
    # is sent once train.py says it got the first (two signals before that could count as one), while
    # that iteration, far longer than the reply takes (a bigger model and batch), still runs
    proc = start_training(project, out, '--max_iters=100000', '--eval_interval=1000', '--n_layer=6', '--n_embd=128',
                          '--batch_size=96')
    wait_for_line(proc, 'iter 0:')
    proc.send_signal(signal.SIGINT)
    wait_for_line(proc, 'SIGINT received')
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode != 0 and 'interrupted again' in stderr and 'Traceback' not in stderr
    assert 'saved checkpoint' not in stdout and not (out / 'ckpt.pt').exists()


def test_nan_stops_with_a_message_and_keeps_the_checkpoint(project, tmp_path):
    out = tmp_path / 'out'
    run_script(project, *TRAIN, f'--out_dir={out}', '--max_iters=10', '--eval_interval=10')
    before = (out / 'ckpt.pt').read_bytes()
    proc = run_script(project, *TRAIN, f'--out_dir={out}', '--max_iters=60', '--eval_interval=5', '--init_from=resume',
                      '--learning_rate=1e6', '--decay_lr=False', '--grad_clip=0', '--always_save_checkpoint=True',
                      check=False)
    assert proc.returncode != 0 and 'Traceback' not in proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error: iter ')
    assert 'learning rate 1e+06' in err[0] and 'lower learning_rate' in err[0] and 'left as it was' in err[0]
    assert (out / 'ckpt.pt').read_bytes() == before


def test_upstream_nanogpt_checkpoint_resumes_and_samples(project, tmp_path):
    """A checkpoint as upstream nanoGPT writes it: compiled-model names, best_val_loss a tensor, no
    RNG, scaler or last_eval_iter entries."""
    out = tmp_path / 'out'
    run_script(project, *TRAIN, f'--out_dir={out}', '--max_iters=10', '--eval_interval=10')
    ckpt = torch.load(out / 'ckpt.pt', map_location='cpu', weights_only=True)
    upstream = {
        'model': {'_orig_mod.' + k: v for k, v in ckpt['model'].items()},
        'optimizer': ckpt['optimizer'],
        'model_args': ckpt['model_args'],
        'iter_num': ckpt['iter_num'],
        'best_val_loss': torch.tensor(ckpt['best_val_loss']),
        'config': {k: v for k, v in ckpt['config'].items() if k not in ('seed', 'peak_flops', 'fsdp')},
    }
    torch.save(upstream, out / 'ckpt.pt')
    proc = run_script(project, *TRAIN, f'--out_dir={out}', '--max_iters=13', '--eval_interval=10', '--init_from=resume')
    assert sorted(losses_by_iter(proc.stdout)) == [10, 11, 12]
    assert not [l for l in proc.stdout.splitlines() if l.startswith('step 10:')]  # upstream saved right after evaluating
    proc = run_script(project, 'sample.py', f'--out_dir={out}', '--num_samples=1', '--max_new_tokens=10', '--device=cpu')
    assert proc.stdout.count('---------------') == 1
