"""The real scripts, end to end, in a copy of the project: prepare, train, resume, sample, bench."""

import re

import torch

from conftest import ITER_LINE, STEP_LINE, TINY, iter_lines, run_script, script_env
from nanogpt.files import read_metrics


def test_train_resume_sample(project, tmp_path):
    out = tmp_path / 'out'
    args = ['train.py', 'config/train_shakespeare_char.py', *TINY, f'--out_dir={out}', '--max_iters=30',
            '--eval_interval=10', '--always_save_checkpoint=True']
    proc = run_script(project, *args)
    lines = proc.stdout.splitlines()
    assert 'number of parameters: 0.03M' in lines
    assert 'tokens per iteration will be: 128' in lines
    iters = [ITER_LINE.match(l) for l in lines if l.startswith('iter ')]
    assert all(iters) and [int(m.group(1)) for m in iters] == list(range(30))
    assert all(m.group(4) == 'n/a' for m in iters)  # no peak known for a CPU
    steps = [STEP_LINE.match(l) for l in lines if l.startswith('step ')]
    assert all(steps) and [int(m.group(1)) for m in steps] == [0, 10, 20, 30]
    assert all(m.group(4).startswith(', eval ') for m in steps)
    losses = [float(m.group(2)) for m in iters]
    assert losses[-1] < losses[0] - 0.3  # it learns

    ckpt = torch.load(out / 'ckpt.pt', map_location='cpu', weights_only=True)
    assert set(ckpt) >= {'model', 'optimizer', 'model_args', 'iter_num', 'best_val_loss', 'config'}
    assert ckpt['iter_num'] == 30 and ckpt['config']['max_iters'] == 30 and ckpt['config']['batch_size'] == 4
    assert not any(k.startswith('_orig_mod.') for k in ckpt['model'])

    # resume continues from the saved iteration, without evaluating it again
    proc = run_script(project, *args[:-3], f'--out_dir={out}', '--max_iters=40', '--eval_interval=10',
                      '--init_from=resume')
    iters = iter_lines(proc.stdout)
    assert [int(m.group(1)) for m in iters] == list(range(30, 40))
    assert [l for l in proc.stdout.splitlines() if l.startswith('step ')][0].startswith('step 40:')
    assert torch.load(out / 'ckpt.pt', map_location='cpu', weights_only=True)['iter_num'] == 40

    proc = run_script(project, 'sample.py', f'--out_dir={out}', '--num_samples=2', '--max_new_tokens=40',
                      '--device=cpu', '--start=ROMEO:')
    samples = [s.split('ROMEO:', 1) for s in proc.stdout.split('---------------\n')[:2]]
    assert all(len(s) == 2 and len(s[1]) >= 40 for s in samples)  # prompt, then 40 new characters
    assert re.search(r'generated 80 tokens in', proc.stderr)


def test_cpu_config_and_sampling_options(project, tmp_path):
    out = tmp_path / 'out'
    proc = run_script(project, 'train.py', 'config/train_shakespeare_char_cpu.py', f'--out_dir={out}', '--max_iters=12',
                      '--eval_interval=6', '--n_layer=1', '--n_embd=32', '--n_head=2', '--eval_iters=2',
                      '--eval_at_start=False')
    # evaluated at 6 and 12, not before the first iteration (a speedrun's saving)
    assert [l.split(':')[0] for l in proc.stdout.splitlines() if l.startswith('step ')] == ['step 6', 'step 12']
    assert [row['iter'] for row in read_metrics(out / 'metrics.jsonl') if 'val_loss' in row] == [6, 12]

    def sample(*extra):
        stdout = run_script(project, 'sample.py', f'--out_dir={out}', '--num_samples=1', '--max_new_tokens=30',
                            *extra).stdout
        return ''.join(l for l in stdout.splitlines(True) if not l.startswith('Overriding'))

    greedy = sample('--temperature=0', '--seed=1')
    assert len(greedy.split('---------------')[0]) >= 31
    assert sample('--temperature=0', '--seed=2', '--kv_cache=False') == greedy  # seed and cache don't matter
    # at temperature 1, sample.py must pass top_k and top_p on: top_k=1, or a nucleus so small that it
    # holds the likeliest token alone, is greedy whatever the seed; without them the same seed is not
    assert sample('--temperature=1', '--seed=3', '--top_k=1') == greedy
    assert sample('--temperature=1', '--seed=3', '--top_p=1e-6') == greedy
    assert sample('--temperature=1', '--seed=3') != greedy


def test_compile_unavailable_warns_once_and_runs_uncompiled(project, tmp_path):
    # a machine without a working C++ compiler cannot compile for the CPU
    env = script_env(CXX=str(tmp_path / 'no-such-compiler'), TORCHINDUCTOR_CACHE_DIR=str(tmp_path / 'inductor'))
    proc = run_script(project, 'train.py', 'config/train_shakespeare_char.py', *TINY, '--compile=True',
                      f'--out_dir={tmp_path}/out', '--max_iters=3', '--eval_interval=3', env=env)
    warnings = [l for l in proc.stderr.splitlines() if l.startswith('warning: torch.compile is not available')]
    assert len(warnings) == 1 and warnings[0].endswith('running uncompiled')
    assert [int(m.group(1)) for m in iter_lines(proc.stdout)] == [0, 1, 2]
