"""
HellaSwag's validation set (10,042 examples), downloaded from its public source into
data/hellaswag/hellaswag_val.jsonl, where benchmarks/evaluate.py (--hellaswag=True) and train.py
(hellaswag_interval) read it. Offline, copy the file there by hand, or give its path to them with
--hellaswag_path.
$ python data/hellaswag/prepare.py
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
from nanogpt.evaluation import HELLASWAG_PATH, HELLASWAG_URL, download_hellaswag  # noqa: E402

if len(sys.argv) > 1:
    sys.exit(f"error: {os.path.basename(__file__)} takes no arguments (it writes {HELLASWAG_PATH})")
examples = download_hellaswag(HELLASWAG_PATH)
print(f"wrote {HELLASWAG_PATH}: {len(examples):,} examples from {HELLASWAG_URL}")
