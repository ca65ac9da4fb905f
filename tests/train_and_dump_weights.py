"""Runs train.py in this process (under torchrun: one rank) and then writes this rank's final weights
to <out_dir>/rank<RANK>.pt, so a test can compare the ranks. Arguments are train.py's."""

import os
import runpy
import sys

import torch

repo = os.getcwd()
sys.path.insert(0, repo)
sys.argv = [os.path.join(repo, 'train.py')] + sys.argv[1:]
result = runpy.run_path(sys.argv[0], run_name='__main__')
state = {k: v.detach().cpu() for k, v in result['raw_model'].state_dict().items()}
torch.save(state, os.path.join(result['out_dir'], f"rank{os.environ.get('RANK', 0)}.pt"))
