"""
Plots a training run from out_dir/metrics.jsonl: losses, learning rate and MFU against iteration.
$ python plot.py --out_dir=out-shakespeare-char
$ python plot.py --out_dir=out --output=run.png
"""

import os

from configurator import configure
from nanogpt import ScriptError
from nanogpt.files import atomic_write, metrics_path, read_metrics

# -----------------------------------------------------------------------------
out_dir = 'out'  # the training run's out_dir, with its metrics.jsonl
output = ''  # where to write the picture; '' means out_dir/loss.png
# -----------------------------------------------------------------------------
configure(globals())
output = output or os.path.join(out_dir, 'loss.png')

try:
    import matplotlib
    matplotlib.use('Agg')  # draw into a file, no display needed
    import matplotlib.pyplot as plt
except ImportError:
    raise ScriptError("plot.py needs matplotlib: pip install matplotlib")

path = metrics_path(out_dir)
try:
    rows = read_metrics(path)
except FileNotFoundError:
    raise ScriptError(f"no metrics at {path}; train with --out_dir={out_dir} first")
except (OSError, UnicodeDecodeError) as e:
    raise ScriptError(f"cannot read {path}: {e}")
if not rows:
    raise ScriptError(f"{path} has no rows yet; plot once training has logged an iteration")

# a row per logged iteration has 'loss', a row per evaluation has 'val_loss'; both have 'lr'. Rows
# without numbers where these belong (a file edited by hand, or from another tool) are left out.
def number(value):
    """Whether value is a number a plot can hold: an int or float within float's range."""
    try:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and abs(float(value)) < float('inf')
    except OverflowError:  # an integer beyond float's range (10**400)
        return False


def numbers(row, *keys):
    return all(number(row.get(k)) for k in keys)


iter_rows = [r for r in rows if numbers(r, 'loss')]
eval_rows = [r for r in rows if numbers(r, 'train_loss', 'val_loss')]
lr_rows = sorted((r for r in rows if numbers(r, 'lr')), key=lambda r: r['iter'])
mfu_rows = [r for r in iter_rows if numbers(r, 'mfu')]  # None until the loop settles, or no peak known

fig, (ax_loss, ax_lr, ax_mfu) = plt.subplots(3, 1, sharex=True, figsize=(8, 8),
                                            gridspec_kw={'height_ratios': (3, 1, 1)})
ax_loss.plot([r['iter'] for r in iter_rows], [r['loss'] for r in iter_rows],
             linewidth=0.8, alpha=0.4, color='gray', label='batch loss')
ax_loss.plot([r['iter'] for r in eval_rows], [r['train_loss'] for r in eval_rows], 'o-', label='train loss')
ax_loss.plot([r['iter'] for r in eval_rows], [r['val_loss'] for r in eval_rows], 's-', label='val loss')
ax_loss.set_ylabel('loss')
ax_loss.legend()
ax_loss.grid(alpha=0.3)
ax_loss.set_title(out_dir)

ax_lr.plot([r['iter'] for r in lr_rows], [r['lr'] for r in lr_rows])
ax_lr.set_ylabel('learning rate')
ax_lr.grid(alpha=0.3)

if mfu_rows:
    ax_mfu.plot([r['iter'] for r in mfu_rows], [r['mfu'] * 100 for r in mfu_rows])  # stored as a fraction
else:
    ax_mfu.text(0.5, 0.5, 'MFU n/a', ha='center', va='center', transform=ax_mfu.transAxes)
    ax_mfu.set_yticks([])
ax_mfu.set_ylabel('MFU %')
ax_mfu.set_xlabel('iteration')
ax_mfu.grid(alpha=0.3)

fig.tight_layout()
try:
    with atomic_write(output) as f:  # a full disk leaves the previous picture, not half of a new one
        fig.savefig(f, format=os.path.splitext(output)[1][1:].lower() or None)
except ValueError as e:  # an extension matplotlib cannot write
    raise ScriptError(f"cannot write {output}: {e}")
print(output)
