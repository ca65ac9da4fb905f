"""Runs train.py in this process (under torchrun: one rank) and records every batch of a split read
in order (nanogpt.data.get_ordered_batch, called as train.py calls it, its result passed on as it
is), then writes them to <out_dir>/rows<RANK>.json as [split length, first row, x rows, y's last
column], in the order train.py asked for them. Arguments are train.py's."""

import json
import os
import runpy
import sys

repo = os.getcwd()
sys.path.insert(0, repo)
import nanogpt.data  # noqa: E402

calls = []
ordered_batch = nanogpt.data.get_ordered_batch


def recorded(data, batch_size, block_size, first_row, *args, **kwargs):
    x, y = ordered_batch(data, batch_size, block_size, first_row, *args, **kwargs)
    calls.append([len(data), first_row, x.tolist(), y[:, -1].tolist()])
    return x, y


nanogpt.data.get_ordered_batch = recorded
sys.argv = [os.path.join(repo, 'train.py')] + sys.argv[1:]
result = runpy.run_path(sys.argv[0], run_name='__main__')
with open(os.path.join(result['out_dir'], f"rows{os.environ.get('RANK', 0)}.json"), 'w') as f:
    json.dump(calls, f)
