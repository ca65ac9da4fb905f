import re

from conftest import flops_per_token, run_script

BENCH = ['bench.py', '--device=cpu', '--compile=False', '--n_layer=2', '--n_head=2', '--n_embd=32', '--block_size=32',
         '--batch_size=4', '--dataset=shakespeare_char', '--burnin=2', '--num_steps=5']
LAST_LINE = re.compile(r'^time per iteration: (\d+\.\d{2})ms, MFU: (\d+\.\d{2}%|n/a), (\d+) tokens/s$')


def test_bench_without_a_known_peak(project):
    proc = run_script(project, *BENCH)
    m = LAST_LINE.match(proc.stdout.strip().splitlines()[-1])
    assert m and m.group(2) == 'n/a'
    ms, tokens_per_s = float(m.group(1)), int(m.group(3))
    assert abs(tokens_per_s - 4 * 32 / (ms / 1000)) <= 0.01 * tokens_per_s + 1
    assert 'set --peak_flops' in proc.stdout


def test_bench_with_peak_flops_and_synthetic_data(project):
    proc = run_script(project, *BENCH, '--peak_flops=1e11', '--real_data=False')
    m = LAST_LINE.match(proc.stdout.strip().splitlines()[-1])
    assert m and m.group(2) != 'n/a'
    # MFU = flops per token x tokens per iteration / time / peak, the flops counted from the shape
    expected = flops_per_token(2, 2, 32, 32, 50304) * 4 * 32 / (float(m.group(1)) / 1000) / 1e11 * 100
    assert abs(float(m.group(2)[:-1]) - expected) <= 0.01 * expected + 0.01


def test_bench_profile_writes_a_trace(project, tmp_path):
    proc = run_script(project, *BENCH, '--profile=True', f'--profile_dir={tmp_path}/trace')
    assert f'profiler trace written to {tmp_path}/trace' in proc.stdout
    assert any((tmp_path / 'trace').iterdir())
    assert LAST_LINE.match(proc.stdout.strip().splitlines()[-1])
