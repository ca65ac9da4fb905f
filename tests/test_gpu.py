"""On a CUDA GPU, the real scripts with tiny shapes: train.py compiled in bfloat16, a checkpoint
resumed in float16 with the GradScaler, and sample.py. Skipped where torch sees no GPU."""

import math

import pytest
import torch

from conftest import iter_lines, run_script

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SHAPE = ['config/train_shakespeare_char.py', '--device=cuda', '--n_layer=2', '--n_head=2', '--n_embd=64',
         '--block_size=64', '--batch_size=8', '--dropout=0.1', '--eval_iters=5', '--log_interval=1',
         '--warmup_iters=2', '--eval_interval=5', '--always_save_checkpoint=True']


def checkpoint(out):
    return torch.load(out / 'ckpt.pt', map_location='cpu', weights_only=True)


def test_compile_bfloat16_then_float16_resume_then_sample(project, tmp_path):
    out = tmp_path / 'out'
    proc = run_script(project, 'train.py', *SHAPE, f'--out_dir={out}', '--max_iters=10', '--compile=True',
                      '--dtype=bfloat16')
    assert 'compiling the model' in proc.stdout
    assert 'torch.compile is not available' not in proc.stderr, proc.stderr  # compiled, not the fallback
    iters = iter_lines(proc.stdout)
    assert all(iters) and [int(m.group(1)) for m in iters] == list(range(10))
    losses = [float(m.group(2)) for m in iters]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    assert [m.group(4) == 'n/a' for m in iters[:5]] == [True] * 5  # then a %, where the GPU is in the table
    ckpt = checkpoint(out)
    assert ckpt['iter_num'] == 10 and ckpt['config']['dtype'] == 'bfloat16' and ckpt['scaler'] is None
    assert not any(k.startswith('_orig_mod.') for k in ckpt['model'])

    # float16 trains through the GradScaler, whose state the checkpoint keeps; a second resume loads it
    proc = run_script(project, 'train.py', *SHAPE, f'--out_dir={out}', '--max_iters=15', '--compile=False',
                      '--dtype=float16', '--init_from=resume')
    iters = iter_lines(proc.stdout)
    assert [int(m.group(1)) for m in iters] == list(range(10, 15))
    assert all(math.isfinite(float(m.group(2))) for m in iters)
    ckpt = checkpoint(out)
    assert ckpt['iter_num'] == 15 and ckpt['scaler'] is not None and ckpt['scaler']['scale'] > 0
    proc = run_script(project, 'train.py', *SHAPE, f'--out_dir={out}', '--max_iters=17', '--compile=False',
                      '--dtype=float16', '--init_from=resume')
    assert [int(m.group(1)) for m in iter_lines(proc.stdout)] == [15, 16]

    proc = run_script(project, 'sample.py', f'--out_dir={out}', '--device=cuda', '--num_samples=2',
                      '--max_new_tokens=40', '--start=ROMEO:')
    samples = [s.split('ROMEO:', 1) for s in proc.stdout.split('---------------\n')[:2]]
    assert all(len(s) == 2 and len(s[1]) >= 40 for s in samples)
    assert 'generated 80 tokens in' in proc.stderr
