"""out_dir/metrics.jsonl: one JSON object per logged iteration and one per evaluation, appended by
train.py and read by plot.py."""

import json
import os


def metrics_path(out_dir):
    return os.path.join(out_dir, 'metrics.jsonl')


def read_metrics(path):
    """The rows of a metrics file; a last line cut short by a kill is skipped."""
    rows = []
    with open(path, encoding='utf-8') as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def append_metrics(path, row):
    with open(path, 'a', encoding='utf-8') as f:
        f.write(json.dumps(row) + '\n')


def trim_metrics(path, resume_iter, keep_eval_at_resume):
    """Before a resumed run appends: drop the rows of the iterations it is about to repeat, so each
    iteration appears once. The evaluation at the resume iteration stays when it is not repeated."""
    if not os.path.exists(path):
        return
    rows = read_metrics(path)
    kept = [r for r in rows if r.get('iter', 0) < resume_iter
            or (keep_eval_at_resume and 'val_loss' in r and r.get('iter') == resume_iter)]
    if len(kept) == len(rows):
        return
    with open(path + '.tmp', 'w', encoding='utf-8') as f:
        f.writelines(json.dumps(r) + '\n' for r in kept)
    os.replace(path + '.tmp', path)
