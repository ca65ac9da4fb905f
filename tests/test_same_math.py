"""The speed work in train.py (batches drawn in one go, losses read back only at log lines, fused
AdamW, the step shared with bench.py) must leave the math alone: its losses are those of a plain
loop written here the way upstream nanoGPT writes its own, from the same seed and the same batches.
The opt-in bfloat16 on a CPU stays within noise of them."""

import numpy as np
import pytest
import torch

from conftest import run_script, upstream_lr
from model import GPT, GPTConfig
from nanogpt.data import get_batch
from nanogpt.files import read_metrics

SEED, ITERS, ACCUM, BATCH, BLOCK = 1337, 10, 2, 4, 32
HPARAMS = dict(learning_rate=5e-3, warmup_iters=2, lr_decay_iters=ITERS, min_lr=1e-4)
ARGS = ['--n_layer=2', '--n_head=2', '--n_embd=32', f'--block_size={BLOCK}', f'--batch_size={BATCH}',
        '--dataset=shakespeare_char', '--dropout=0.0', '--device=cpu', '--compile=False', '--eval_iters=2', '--log_interval=1',
        f'--max_iters={ITERS}', f'--gradient_accumulation_steps={ACCUM}', '--weight_decay=0.1',
        '--beta1=0.9', '--beta2=0.99', '--grad_clip=1.0', '--eval_interval=1000', f'--seed={SEED}',
        *(f'--{k}={v}' for k, v in HPARAMS.items())]


def initial_model():
    """The model train.py starts from with ARGS: the same shape, the same seed."""
    torch.manual_seed(SEED)
    return GPT(GPTConfig(block_size=BLOCK, vocab_size=65, n_layer=2, n_head=2, n_embd=32, dropout=0.0, bias=False))


def reference_losses(train_bin):
    model = initial_model()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{'params': decay, 'weight_decay': 0.1}, {'params': no_decay, 'weight_decay': 0.0}],
                                  betas=(0.9, 0.99))  # unfused, as upstream has it on a CPU
    data = np.memmap(train_bin, dtype=np.uint16, mode='r')
    losses = []
    for it in range(ITERS):
        for group in optimizer.param_groups:
            group['lr'] = upstream_lr(it, **HPARAMS)
        total = 0.0
        for micro_step in range(ACCUM):
            X, Y = get_batch(data, BATCH, BLOCK, (SEED, 0, it, micro_step), 65)  # train.py's batch seeds
            _, loss = model(X, Y)
            (loss / ACCUM).backward()
            total += loss.item() / ACCUM
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(total)
    return losses


def logged_losses(out_dir):
    return [row['loss'] for row in read_metrics(out_dir / 'metrics.jsonl') if 'loss' in row]


@pytest.fixture(scope='module')
def reference(project):
    return reference_losses(project / 'data' / 'shakespeare_char' / 'train.bin')


@pytest.mark.parametrize('dtype,tolerance', [('float32', 1e-5), ('bfloat16', 0.01)])
def test_train_py_losses_match_a_plain_training_loop(project, tmp_path, reference, dtype, tolerance):
    run_script(project, 'train.py', *ARGS, f'--dtype={dtype}', f'--out_dir={tmp_path}')
    losses = logged_losses(tmp_path)
    assert len(losses) == ITERS
    assert reference[-1] < reference[0] - 0.3  # it learns, so the comparison covers real updates
    assert max(abs(a - b) for a, b in zip(losses, reference)) < tolerance, (losses, reference)


def test_estimate_loss_is_the_mean_loss_of_its_batches(project, tmp_path):
    """train.py's evaluation (inference_mode, no host sync per batch, sums all-reduced across ranks)
    must report the mean of eval_iters per-batch losses, as upstream's one-batch-at-a-time loop does."""
    eval_iters = 3
    run_script(project, 'train.py', *ARGS, '--eval_only=True', f'--eval_iters={eval_iters}', f'--out_dir={tmp_path}')
    logged = read_metrics(tmp_path / 'metrics.jsonl')[0]
    model = initial_model().eval()
    for s, split in enumerate(('train', 'val')):
        data = np.memmap(project / 'data' / 'shakespeare_char' / f'{split}.bin', dtype=np.uint16, mode='r')
        with torch.no_grad():  # train.py's evaluation batch seeds: (seed, 1, iteration, split, k)
            losses = [model(*get_batch(data, BATCH, BLOCK, (SEED, 1, 0, s, k), 65))[1].item() for k in range(eval_iters)]
        assert logged[f'{split}_loss'] == pytest.approx(sum(losses) / eval_iters, abs=1e-5)
