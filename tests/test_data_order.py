"""data_order='sequential' and fixed_val_set through train.py on numbered tokens (each token's id is
its place in the split, so the batches say what was read), under torchrun and across a resume."""

import json
import os
import pickle
import shutil

import numpy as np
import pytest
import torch

from conftest import REPO, TINY, iter_lines, run_script, torchrun
from test_gpt2 import run_in_process

BLOCK, BATCH, STEPS = 8, 2, 4  # 4 micro-steps of 2 rows: 8 rows of 9 tokens an iteration
SHARDS = [100, 37, 144]  # 281 tokens: 35 rows of 8 inputs, the last token a target only
ROWS = (sum(SHARDS) - 1) // BLOCK
VAL = 80  # val tokens, numbered from 300
ARGS = [*TINY, f'--block_size={BLOCK}', f'--batch_size={BATCH}', f'--gradient_accumulation_steps={STEPS}',
        '--data_order=sequential', '--fixed_val_set=True', '--eval_iters=3', '--always_save_checkpoint=True']


@pytest.fixture(scope='module')
def numbered(project, tmp_path_factory):
    """A dataset of train shards holding the tokens 0, 1, 2, ... in order and a val shard of 300, 301, ...,
    its meta.pkl listing the files; and the project with the recording wrapper of train.py."""
    folder = tmp_path_factory.mktemp('numbered')
    starts = np.cumsum([0] + SHARDS)
    files = {}
    for i, n in enumerate(SHARDS):
        np.arange(starts[i], starts[i] + n, dtype=np.uint16).tofile(folder / f'train_{i:03d}.bin')
        files[f'train_{i:03d}.bin'] = n
    np.arange(300, 300 + VAL, dtype=np.uint16).tofile(folder / 'val_000.bin')
    files['val_000.bin'] = VAL
    (folder / 'meta.pkl').write_bytes(pickle.dumps({'vocab_size': 512, 'dtype': 'uint16', 'files': files}))
    shutil.copy(REPO / 'tests' / 'train_and_record_batches.py', project / 'train_and_record_batches.py')
    return folder


def trained(out_dir, ranks, split_tokens=sum(SHARDS)):
    """The training batches each rank read, in the order it trained on them: all but the last it read
    (fetched ahead for an iteration that did not run)."""
    rows = [json.loads((out_dir / f'rows{r}.json').read_text()) for r in range(ranks)]
    return [[c for c in calls if c[0] == split_tokens][:-1] for calls in rows]


def by_iteration(per_rank, steps_per_rank):
    """{iteration: the inputs of its micro-batches, numbered across the ranks (rank 0's first)}, as tokens."""
    out = {}
    for calls in zip(*[[calls[i:i + steps_per_rank] for i in range(0, len(calls), steps_per_rank)] for calls in per_rank]):
        out[len(out)] = np.array([x for rank_calls in calls for c in rank_calls for x in c[2]]).reshape(-1)
    return out


def stream(first_row, rows):
    """The inputs of `rows` rows from first_row on, read in order and epoch after epoch."""
    return np.concatenate([np.arange(BLOCK * (r % ROWS), BLOCK * (r % ROWS) + BLOCK) for r in range(first_row, first_row + rows)])


@pytest.fixture(scope='module')
def runs(project, numbered, tmp_path_factory):
    """Two processes under torchrun, 2 micro-steps each: 9 iterations of 8 rows (72 rows: 2 epochs and a
    bit) uninterrupted, and the same run stopped at 5 (with a copy of it), evaluated at 0 and 5."""
    base = tmp_path_factory.mktemp('runs')
    whole = torchrun(project, 'train_and_record_batches.py', *ARGS, f'--dataset={numbered}', f'--out_dir={base / "whole"}',
                     '--max_iters=9', '--eval_interval=9')
    parts = torchrun(project, 'train_and_record_batches.py', *ARGS, f'--dataset={numbered}', f'--out_dir={base / "parts"}',
                     '--max_iters=5', '--eval_interval=5')
    shutil.copytree(base / 'parts', base / 'parts_copy')
    return base, whole, parts


def test_sequential_order_reads_every_token_once_an_epoch_and_resumes_where_it_stopped(project, numbered, runs):
    base, whole, _ = runs
    reads = by_iteration(trained(base / 'whole', 2), STEPS // 2)
    assert sorted(reads) == list(range(9))
    inputs = np.concatenate([reads[it] for it in range(9)])
    assert np.array_equal(inputs, stream(0, 9 * 8))
    # epoch 1: every token an input once, but the last, a target only
    assert np.array_equal(np.sort(inputs[:ROWS * BLOCK]), np.arange(sum(SHARDS) - 1))
    for calls in trained(base / 'whole', 2):
        for _, _, x, y_last in calls:
            assert all(row[-1] + 1 == last for row, last in zip(x, y_last))  # each row's target: the next token
    epochs = [line for line in whole.stdout.splitlines() if line.startswith('epoch ')]
    assert epochs == ['epoch 2: iteration 4 reads the training split again from its start',
                      'epoch 3: iteration 8 reads the training split again from its start'], whole.stdout

    # stopped at 5, resumed on one process that takes all 4 micro-steps: the same rows, iteration by iteration
    first = by_iteration(trained(base / 'parts', 2), STEPS // 2)
    proc = run_script(project, 'train_and_record_batches.py', *ARGS, f'--dataset={numbered}', f'--out_dir={base / "parts"}',
                      '--max_iters=9', '--eval_interval=5', '--init_from=resume')
    assert [int(m.group(1)) for m in iter_lines(proc.stdout)] == [5, 6, 7, 8]
    assert 'iteration 5 starts at row 5 of epoch 2' in proc.stdout and 'epoch 3: iteration 8 reads' in proc.stdout
    then = by_iteration(trained(base / 'parts', 1), STEPS)
    assert list(first) == list(range(5)) and len(then) == 4
    for it in range(9):
        assert np.array_equal(first[it] if it < 5 else then[it - 5], reads[it]), it

    # resumed with a quarter of the rows an iteration (batch_size 1, 2 micro-steps): on from row 40 all the same
    resumed = base / 'parts_batch1'
    shutil.copytree(base / 'parts_copy', resumed)
    run_script(project, 'train_and_record_batches.py', *ARGS, f'--dataset={numbered}', f'--out_dir={resumed}',
               '--max_iters=9', '--eval_interval=5', '--init_from=resume', '--batch_size=1',
               '--gradient_accumulation_steps=2')
    calls = trained(resumed, 1)[0]
    assert np.array_equal(np.concatenate([np.reshape(c[2], -1) for c in calls]), stream(40, 4 * 2))


def test_fixed_val_set_is_the_first_rows_shared_among_the_ranks(runs):
    """eval_iters=3 batches of 2 rows on 2 ranks: rank 0 takes batches 0 and 2, rank 1 batch 1 and one that
    is computed (the ranks stay in step) but not counted. The printed val loss is the mean over rows 0-5
    of the val split, computed here from the checkpoint saved right after that evaluation."""
    base, _, parts = runs
    out = base / 'parts_copy'
    val_calls = [[c for c in json.loads((out / f'rows{r}.json').read_text()) if c[0] == VAL] for r in range(2)]
    assert [c[1] for c in val_calls[0]] == [0, 4, 0, 4] and [c[1] for c in val_calls[1]] == [2, 0, 2, 0]  # 2 evaluations
    step = [line for line in parts.stdout.splitlines() if line.startswith('step 5:')][0]
    printed = float(step.split('val loss ')[1].split(',')[0])
    from model import GPT, GPTConfig
    ckpt = torch.load(out / 'ckpt.pt', map_location='cpu', weights_only=True)
    model = GPT(GPTConfig(**ckpt['model_args']))
    model.load_state_dict(ckpt['model'])
    model.eval()
    rows = torch.from_numpy(np.stack([np.arange(300 + BLOCK * r, 300 + BLOCK * r + BLOCK + 1) for r in range(6)]))
    with torch.no_grad():
        _, loss = model(rows[:, :-1].long(), rows[:, 1:].long())
    assert abs(loss.item() - printed) < 1e-4, (loss.item(), step)
    assert ckpt['train_row'] == 5 * 8  # where the next iteration starts


def test_sequential_settings_refused_with_one_line(monkeypatch, numbered, runs, tmp_path):
    damaged = tmp_path / 'damaged'
    damaged.mkdir()
    ckpt = torch.load(runs[0] / 'parts_copy' / 'ckpt.pt', map_location='cpu', weights_only=True)
    torch.save(dict(ckpt, train_row=-8), damaged / 'ckpt.pt')
    for args, expected in [
        ([f'--out_dir={damaged}', '--init_from=resume', '--max_iters=9'],
         f"{damaged / 'ckpt.pt'} cannot be used: its train_row is -8, not a row number (an integer from 0); "
         "point out_dir at another checkpoint"),
        (['--data_order=shuffled'], "data_order must be 'random' or 'sequential', got 'shuffled'"),
        (['--eval_iters=5', '--batch_size=2'],
         "fixed_val_set=True evaluates on the first eval_iters x batch_size = 10 rows of 9 tokens of the val split, "
         "which has 9; lower eval_iters"),
    ]:
        e = run_in_process(monkeypatch, 'train.py', *ARGS, f'--dataset={numbered}', f'--out_dir={tmp_path / "o"}', *args)
        assert e is not None and e.code == f'error: {expected}'
        assert not (tmp_path / 'o').exists() and sorted(os.listdir(damaged)) == ['ckpt.pt']
