"""Never lose a run: clear one-line errors for bad input, exact resume, kills, signals and NaNs."""

import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from conftest import TINY, iter_lines, run_script, script_env
from nanogpt.data import write_dataset

TRAIN = ['train.py', 'config/train_shakespeare_char.py', *TINY]


@pytest.fixture(scope='module')
def trained(project, tmp_path_factory):
    """A tiny model trained 10 iterations (its checkpoint), and odd datasets to feed the scripts."""
    base = tmp_path_factory.mktemp('bad')
    out = base / 'out'
    run_script(project, *TRAIN, f'--out_dir={out}', '--max_iters=10', '--eval_interval=10')
    write_dataset(base / 'short', list(range(60)) * 2, list(range(20)), {'vocab_size': 65})  # val: 20 tokens
    write_dataset(base / 'big_ids', list(range(300)), list(range(300)), {'vocab_size': 65})  # ids up to 299
    (base / 'no_val').mkdir()
    (base / 'no_val' / 'train.bin').write_bytes(bytes(400))
    truncated = base / 'truncated'
    truncated.mkdir()
    data = (out / 'ckpt.pt').read_bytes()
    (truncated / 'ckpt.pt').write_bytes(data[:len(data) // 3])
    (base / 'raises.py').write_text("batch_size = 4\nraise RuntimeError('nope')\n")
    (base / 'typo.py').write_text("batch_size = 4\nlearnig_rate = 1e-3\n")
    (base / 'binary.py').write_bytes(b'\xff\xfe\x00bad')
    (base / 'empty_out').mkdir()
    return base


BAD_INPUTS = [
    # (name, script arguments, text expected in the error line)
    ('unknown key on the command line', ['--batchsize=4'], "unknown config key 'batchsize'"),
    ('unknown key in a config file', ['{base}/typo.py'], "unknown config key 'learnig_rate'"),
    ('value of the wrong type', ['--max_iters=lots'], "max_iters expects int"),
    ('missing config file', ['{base}/nope.py'], "config file {base}/nope.py not found"),
    ('unreadable config file', ['{base}/binary.py'], "cannot read config file"),
    ('config file that raises', ['{base}/raises.py'], "raises.py failed at line 2: RuntimeError: nope"),
    ('missing dataset folder', ['--dataset=shakespeare'], "run python data/shakespeare/prepare.py first"),
    ('missing .bin file', ['--dataset={base}/no_val'], "val.bin does not exist"),
    ('split not longer than block_size', ['--dataset={base}/short', '--block_size=32'], "needs more than block_size=32"),
    ('token ids not below vocab_size', ['--dataset={base}/big_ids'], "token id 299, not below the model's vocab_size 65"),
    ('n_embd not divisible by n_head', ['--n_embd=30', '--n_head=4'], "n_embd=30 is not divisible by n_head=4"),
    ('zero batch_size', ['--batch_size=0'], "batch_size must be a positive integer"),
    ('negative block_size', ['--block_size=-8'], "block_size must be a positive integer"),
    ('zero n_layer', ['--n_layer=0'], "n_layer must be a positive integer"),
    ('negative max_iters', ['--max_iters=-1'], "max_iters must be a positive integer"),
    ('zero eval_iters', ['--eval_iters=0'], "eval_iters must be a positive integer"),
    ('resume without a checkpoint', ['--init_from=resume', '--out_dir={base}/empty_out'], "no checkpoint at"),
    ('truncated checkpoint', ['--init_from=resume', '--out_dir={base}/truncated'], "truncated or corrupt"),
    ('resume with a larger block_size', ['--init_from=resume', '--out_dir={base}/out', '--block_size=64'],
     "block_size=64 is larger than the checkpoint's 32"),
    ('unknown device', ['--device=tpu'], "unknown device 'tpu'"),
    ('unknown dtype', ['--dtype=float8'], "unknown dtype 'float8'"),
    ('dtype the device cannot do', ['--dtype=float16'], "float16 training needs a GPU"),
    ('attention kernel the device has not', ['--sdpa_backend=cudnn'], "sdpa_backend=cudnn is a CUDA kernel"),
    ('init_from nonsense', ['--init_from=scratchy'], "init_from='scratchy'"),
]


def snapshot(folder):
    return {p: p.read_bytes() for p in folder.rglob('*') if p.is_file()}


def test_bad_input_table(project, trained):
    before = snapshot(trained)
    cases = [(name, [a.format(base=trained) for a in args], expected.format(base=trained))
             for name, args, expected in BAD_INPUTS]
    fresh_out = trained / 'fresh_out'

    def run(case):
        name, args, expected = case
        has_out = any(a.startswith('--out_dir') for a in args)
        return case, run_script(project, *TRAIN, '--max_iters=5', *([] if has_out else [f'--out_dir={fresh_out}']),
                                *args, check=False)

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(run, cases))
    for (name, args, expected), proc in results:
        err = proc.stderr.strip().splitlines()
        assert proc.returncode != 0, name
        assert 'Traceback' not in proc.stderr, f"{name}: {proc.stderr}"
        assert len(err) == 1 and err[0].startswith('error: ') and expected in err[0], f"{name}: {err}"
    assert not fresh_out.exists()  # nothing half-written
    assert snapshot(trained) == before


def test_sample_bad_inputs(project, trained):
    proc = run_script(project, 'sample.py', f'--out_dir={trained}/out', '--start=Привет', '--device=cpu', check=False)
    assert proc.returncode != 0 and 'Traceback' not in proc.stderr
    assert "characters that are not in the vocabulary of dataset shakespeare_char: 'П'" in proc.stderr
    proc = run_script(project, 'sample.py', f'--out_dir={trained}/empty_out', '--device=cpu', check=False)
    assert proc.returncode != 0 and proc.stderr.strip().startswith('error: no checkpoint at')


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
