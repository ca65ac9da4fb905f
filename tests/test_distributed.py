"""DDP and FSDP through torchrun on CPU with gloo: two processes, tiny models."""

import shutil

import pytest
import torch

from conftest import REPO, TINY, assert_printed_mfu, flops_per_token, iter_lines, run_script, torchrun
from nanogpt.files import read_metrics

TRAIN_ARGS = ['config/train_shakespeare_char.py', *TINY, '--always_save_checkpoint=True', '--warmup_iters=2',
              '--learning_rate=1e-2']


def weights(path):
    return torch.load(path, map_location='cpu', weights_only=True)


def test_ddp_run_logs_once_keeps_ranks_identical_and_resumes_on_one_process(project, tmp_path):
    out = tmp_path / 'out'
    shutil.copy(REPO / 'tests' / 'train_and_dump_weights.py', project / 'train_and_dump_weights.py')
    proc = torchrun(project, 'train_and_dump_weights.py', *TRAIN_ARGS, f'--out_dir={out}', '--max_iters=6',
                    '--eval_interval=3', '--gradient_accumulation_steps=2', '--peak_flops=1e10')
    assert proc.stdout.count('iter 0:') == 1 and proc.stdout.count('step 6:') == 1  # rank 0 alone prints
    assert [int(m.group(1)) for m in iter_lines(proc.stdout)] == list(range(6))
    assert 'tokens per iteration will be: 256' in proc.stdout  # 2 ranks x 1 micro-step x 4 x 32
    # MFU per device: each rank's 128 tokens against one device's peak
    assert_printed_mfu(iter_lines(proc.stdout), flops_per_token(2, 2, 32, 32, 65) * 128, 1e10)
    rank0, rank1 = weights(out / 'rank0.pt'), weights(out / 'rank1.pt')
    assert rank0.keys() == rank1.keys() and all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    ckpt = weights(out / 'ckpt.pt')
    assert ckpt['iter_num'] == 6 and all(torch.equal(ckpt['model'][k], rank0[k]) for k in rank0)
    proc = run_script(project, 'train.py', *TRAIN_ARGS, f'--out_dir={out}', '--max_iters=8', '--eval_interval=3',
                      '--gradient_accumulation_steps=2', '--init_from=resume')
    assert [int(m.group(1)) for m in iter_lines(proc.stdout)] == [6, 7]


SAME_BATCHES = [*TRAIN_ARGS, '--max_iters=2', '--eval_interval=1', '--gradient_accumulation_steps=2']


@pytest.fixture(scope='module')
def same_batches(project, tmp_path_factory):
    """Two iterations three ways over the same batches: one process with two micro-steps, and two
    ranks with one micro-step each, under DDP and under FSDP. Every iteration is evaluated, with
    eval_iters=2: one batch per rank, the union of the two ranks' batches being the single run's."""
    base = tmp_path_factory.mktemp('same_batches')
    run_script(project, 'train.py', *SAME_BATCHES, f'--out_dir={base}/single')
    torchrun(project, 'train.py', *SAME_BATCHES, f'--out_dir={base}/ddp')
    torchrun(project, 'train.py', *SAME_BATCHES, f'--out_dir={base}/fsdp', '--fsdp=True')
    return base


@pytest.mark.parametrize('mode', ['ddp', 'fsdp'])
def test_two_ranks_equal_one_process_with_two_micro_steps(same_batches, mode):
    """Two ranks with one micro-step each draw the two batches that one process with two micro-steps
    draws, so the weights, the optimizer state and every logged loss (the training losses and the
    evaluations, which the ranks share out and all-reduce) agree to float32 rounding."""
    single, ranks = weights(same_batches / 'single' / 'ckpt.pt'), weights(same_batches / mode / 'ckpt.pt')
    assert ranks['iter_num'] == single['iter_num'] == 2
    assert ranks['model'].keys() == single['model'].keys()
    for k, v in single['model'].items():
        torch.testing.assert_close(ranks['model'][k], v, atol=1e-6, rtol=1e-5)
    # AdamW's moments, in upstream's numbering (FSDP's are gathered from the shards and renumbered)
    assert ranks['optimizer']['state'].keys() == single['optimizer']['state'].keys()
    for i, state in single['optimizer']['state'].items():
        for name in ('exp_avg', 'exp_avg_sq'):
            torch.testing.assert_close(ranks['optimizer']['state'][i][name], state[name], atol=1e-9, rtol=1e-4)
    rows = {run: read_metrics(same_batches / run / 'metrics.jsonl') for run in ('single', mode)}
    assert [r['iter'] for r in rows[mode]] == [r['iter'] for r in rows['single']] == [0, 0, 1, 1, 2]
    for mine, theirs in zip(rows[mode], rows['single']):
        for key in ('loss', 'train_loss', 'val_loss'):
            if key in theirs:
                assert mine[key] == pytest.approx(theirs[key], abs=1e-6), (key, mine, theirs)
    assert single['best_val_loss'] == pytest.approx(ranks['best_val_loss'], abs=1e-6)
    # the steps did move the weights away from their initial values (train.py seeds 1337 before the init)
    from model import GPT, GPTConfig
    torch.manual_seed(1337)
    initial = GPT(GPTConfig(block_size=32, vocab_size=65, n_layer=2, n_head=2, n_embd=32, bias=False)).state_dict()
    assert (single['model']['transformer.h.0.mlp.c_fc.weight'] - initial['transformer.h.0.mlp.c_fc.weight']).abs().max() > 1e-3


def test_non_dividing_gradient_accumulation_is_one_clear_line(project, tmp_path):
    proc = torchrun(project, 'train.py', *TRAIN_ARGS, f'--out_dir={tmp_path}/out', '--gradient_accumulation_steps=3',
                    check=False)
    assert proc.returncode != 0
    # said once, by rank 0; the other rank leaves quietly with the same exit code
    assert proc.stderr.count('error: gradient_accumulation_steps=3 does not divide among 2 processes; use a '
                             'multiple of 2 (2, 4, 6') == 1, proc.stderr
    assert not (tmp_path / 'out').exists()


def test_fsdp_checkpoint_resumes_on_one_process_and_samples(project, tmp_path):
    """Compiled, as by default: the checkpoint is gathered through torch.compile's wrapper."""
    out = tmp_path / 'out'
    proc = torchrun(project, 'train.py', *TRAIN_ARGS, f'--out_dir={out}', '--max_iters=4', '--eval_interval=2',
                    '--gradient_accumulation_steps=2', '--fsdp=True', '--compile=True')
    assert proc.stdout.count('iter 0:') == 1 and 'running uncompiled' not in proc.stderr
    ckpt = weights(out / 'ckpt.pt')
    assert ckpt['iter_num'] == 4 and not any(k.startswith(('_orig_mod.', 'module.')) for k in ckpt['model'])
    assert sorted(ckpt['optimizer']['state']) == list(range(len(ckpt['optimizer']['state'])))  # upstream's format
    proc = run_script(project, 'train.py', *TRAIN_ARGS, f'--out_dir={out}', '--max_iters=6', '--eval_interval=2',
                      '--gradient_accumulation_steps=2', '--init_from=resume')
    assert [int(m.group(1)) for m in iter_lines(proc.stdout)] == [4, 5]
    proc = run_script(project, 'sample.py', f'--out_dir={out}', '--num_samples=1', '--max_new_tokens=20', '--device=cpu')
    assert len(proc.stdout.split('---------------')[0].splitlines()[-1]) > 0


@pytest.mark.parametrize('env,device,backend,expected_device,set_device,init', [
    # one process on GPU 1: GPU 1 becomes the current device, so nothing lands on GPU 0
    ({}, 'cuda:1', 'auto', 'cuda:1', 'cuda:1', None),
    ({}, 'cuda', 'auto', 'cuda', None, None),
    ({}, 'cpu', 'auto', 'cpu', None, None),
    # under torchrun: each rank on its local GPU, NCCL bound to it
    ({'RANK': '3', 'LOCAL_RANK': '1', 'WORLD_SIZE': '4'}, 'cuda', 'auto', 'cuda:1', 'cuda:1',
     {'backend': 'nccl', 'device_id': torch.device('cuda:1')}),
    ({'RANK': '1', 'LOCAL_RANK': '1', 'WORLD_SIZE': '2'}, 'cuda', 'gloo', 'cuda:1', 'cuda:1', {'backend': 'gloo'}),
    ({'RANK': '1', 'LOCAL_RANK': '1', 'WORLD_SIZE': '2'}, 'cpu', 'auto', 'cpu', None, {'backend': 'gloo'}),
])
def test_setup_picks_the_device_and_binds_nccl_to_it(monkeypatch, env, device, backend, expected_device, set_device, init):
    """The choices setup() makes, with the calls that need GPUs or a process group recorded instead of made."""
    from nanogpt import distributed
    for key in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE'):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    calls = {'set_device': None, 'init': None}
    monkeypatch.setattr(torch.cuda, 'set_device', lambda d: calls.update(set_device=d))

    def init_process_group(backend=None, device_id=None):  # the parameters setup() may pass
        calls['init'] = {'backend': backend, **({'device_id': device_id} if device_id is not None else {})}
    monkeypatch.setattr(distributed.dist, 'init_process_group', init_process_group)
    rank, local_rank, world_size, chosen = distributed.setup(backend, device)
    assert chosen == expected_device and calls == {'set_device': set_device, 'init': init}
    assert (rank, local_rank, world_size) == (int(env.get('RANK', 0)), int(env.get('LOCAL_RANK', 0)),
                                              int(env.get('WORLD_SIZE', 1)))
