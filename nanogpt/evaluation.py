"""
Measuring a model: train.py's evaluation (the loss over eval_iters batches of each split), its loss on
a whole split (the same tokens for every run, so two runs or two recipes compare exactly), and
HellaSwag. Used by train.py, benchmarks/evaluate.py and benchmarks/compare.py.

HellaSwag (Zellers et al. 2019, https://github.com/rowanz/hellaswag) in completion style, as
build-nanogpt and llm.c score it: each example's context is followed by each of its 4 endings, and the
model's loss on the ending's tokens decides. acc_norm takes the ending with the lowest mean loss per
token, acc the lowest summed loss. Published for GPT-2 124M in this style: acc 0.2859, acc_norm 0.2955
over the 10,042 validation examples (build-nanogpt's hellaswag.py). The validation file is one JSON
object per line with 'ctx' (the context), 'endings' (4 strings) and 'label' (the index of the right
one); data/hellaswag/prepare.py downloads it.
"""

import os

import numpy as np
import torch
from torch.nn import functional as F

from nanogpt import ScriptError, distributed
from nanogpt.corpus import json_lines
from nanogpt.data import GPT2_VOCAB_SIZE, ROOT, get_batch, get_ordered_batch, gpt2_encoding
from nanogpt.files import atomic_write

HELLASWAG_URL = 'https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl'
HELLASWAG_PATH = os.path.join(ROOT, 'data', 'hellaswag', 'hellaswag_val.jsonl')
HELLASWAG_EXAMPLES = 10042


def estimate_loss(model, splits, eval_iters, batch_size, block_size, vocab_size, device, ctx, seed, rank=0,
                  world_size=1, fixed_val_set=False, inference_mode=True):
    """Mean loss over eval_iters batches of each split ({name: data}): random ones, drawn with seed +
    (the split's index, the batch's), or for val with fixed_val_set the first eval_iters x batch_size
    rows of the split read in order. The batches are shared out among the ranks (every rank works; a
    rank left without a batch of the fixed set computes one that is not counted) and the sums are
    all-reduced; the host waits for the device once per split. inference_mode=False: under no_grad
    instead, where FSDP's parameters must stay usable by autograd, and where the model is compiled
    (CUDA graphs first recorded under inference_mode make the training graph's recording fail,
    pytorch/pytorch#135892)."""
    out = {}
    model.eval()
    n_local = -(-eval_iters // world_size)  # equal counts on every rank, as FSDP's collectives need
    with torch.inference_mode() if inference_mode else torch.no_grad():
        for s, (split, data) in enumerate(splits.items()):
            fixed = split == 'val' and fixed_val_set
            total = torch.zeros(2, device=device)
            for i in range(n_local):
                k = rank + i * world_size
                if fixed:
                    X, Y = get_ordered_batch(data, batch_size, block_size, k % eval_iters * batch_size, vocab_size,
                                             device)
                else:
                    X, Y = get_batch(data, batch_size, block_size, (*seed, s, k), vocab_size, device)
                with ctx:
                    _, loss = model(X, Y)
                if k < eval_iters or not fixed:
                    total += torch.stack((loss.float(), torch.ones((), device=device)))
            loss_sum, count = distributed.all_reduce_sum(total).tolist()
            out[split] = loss_sum / count
    model.train()
    return out


def whole_split_loss(model, data, block_size, batch_size, device, ctx):
    """Mean loss per token over all of data (a flat token array), read in consecutive windows of
    block_size that do not overlap: every token but the first is predicted once, from the tokens
    before it in its window; a last, shorter window takes the remainder. Returns (loss, the number
    of tokens predicted)."""
    n_pred = len(data) - 1
    n_full = n_pred // block_size
    batches = [(np.arange(lo, min(lo + batch_size, n_full)) * block_size, block_size) for lo in range(0, n_full, batch_size)]
    if n_pred % block_size:
        batches.append((np.array([n_full * block_size]), n_pred % block_size))
    total = torch.zeros((), device=device, dtype=torch.float64)
    with torch.inference_mode():
        for starts, size in batches:
            chunk = np.asarray(data[starts[0]:starts[-1] + size + 1])  # a slice: a memmap or TokenShards reads just that
            rows = torch.from_numpy(chunk[(starts - starts[0])[:, None] + np.arange(size + 1)].astype(np.int64)).to(device)
            with ctx:
                _, loss = model(rows[:, :-1], rows[:, 1:])
            total += loss.double() * (len(starts) * size)
    return total.item() / n_pred, n_pred


def text_bytes(data, lengths, chunk=1 << 22):
    """The UTF-8 bytes that the tokens whole_split_loss scores (all of data but its first token) stand
    for: lengths[id] for each, summed a chunk at a time (data may be a memmap larger than memory). An id
    past lengths (a padded vocabulary's) stands for none."""
    lengths = np.asarray(list(lengths) + [0], dtype=np.int64)  # the last entry for ids past the table
    total = 0
    for lo in range(1, len(data), chunk):
        ids = np.asarray(data[lo:lo + chunk]).astype(np.int64)
        total += int(lengths[np.minimum(ids, len(lengths) - 1)].sum())
    return total


def parse_hellaswag(lines, where):
    """[(context, [4 endings], label)] of HellaSwag's JSONL lines; a line in another format ends the
    script with one line that says which and why."""
    examples = []
    for number, item in json_lines(lines, where, "expected HellaSwag's JSONL, one object with ctx, endings and "
                                                 "label per line"):
        endings = item.get('endings') if isinstance(item, dict) else None
        label = item.get('label') if isinstance(item, dict) else None
        if isinstance(label, str) and label.isdigit():
            label = int(label)  # the copy on the Hugging Face hub writes it as a string
        if not (isinstance(item, dict) and isinstance(item.get('ctx'), str) and isinstance(endings, list)
                and len(endings) == 4 and all(isinstance(e, str) for e in endings)
                and type(label) is int and 0 <= label < 4):
            raise ScriptError(f"{where} line {number} is not a HellaSwag example: it needs ctx (a string), "
                              f"endings (4 strings) and label (0 to 3)")
        examples.append((item['ctx'], endings, label))
    if not examples:
        raise ScriptError(f"{where} holds no HellaSwag examples")
    return examples


def load_hellaswag(path):
    try:
        with open(path, encoding='utf-8') as f:
            return parse_hellaswag(f.readlines(), path)
    except FileNotFoundError:
        hint = "run python data/hellaswag/prepare.py first (it downloads it)" if path == HELLASWAG_PATH else \
            f"point hellaswag_path at HellaSwag's validation file ({HELLASWAG_URL})"
        raise ScriptError(f"{path} does not exist; {hint}")
    except (OSError, UnicodeDecodeError) as e:
        raise ScriptError(f"cannot read {path}: {e}")


def download_hellaswag(path=HELLASWAG_PATH, url=HELLASWAG_URL):
    """Downloads HellaSwag's validation file to path (whole or not at all), checking its format first."""
    import requests
    try:
        response = requests.get(url, timeout=60)
        response.raise_for_status()
    except requests.RequestException as e:
        raise ScriptError(f"could not download {url} ({type(e).__name__}); offline, copy it to {path} by hand, "
                          f"or give its path with hellaswag_path")
    examples = parse_hellaswag(response.text.splitlines(), url)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path) as f:
        f.write(response.content)
    return examples


def encode_hellaswag(examples, encode, block_size):
    """Each example as (rows, ending starts, label): the 4 token rows context + ending, and where each
    ending begins. Endings are encoded with a leading space, as words follow a context in GPT-2's BPE.
    A row longer than block_size + 1 loses the start of its context."""
    encoded = []
    for context, endings, label in examples:
        ctx = encode(context)
        rows, starts = [], []
        for ending in endings:
            end = encode(' ' + ending)
            if len(end) > block_size:
                raise ScriptError(f"a HellaSwag ending is {len(end)} tokens long, more than the model's "
                                  f"block_size {block_size} can score after its context")
            row = (ctx + end)[-(block_size + 1):]
            rows.append(row)
            starts.append(len(row) - len(end))
        encoded.append((rows, starts, label))
    return encoded


def hellaswag_for_model(path, vocab_size, block_size):
    """HellaSwag's examples from path ('' for HELLASWAG_PATH), encoded for a model with GPT-2's tokens."""
    if vocab_size < GPT2_VOCAB_SIZE:
        raise ScriptError(f"HellaSwag is scored in GPT-2's tokens; this model's vocabulary has {vocab_size} "
                          f"(a character-level model?)")
    return encode_hellaswag(load_hellaswag(path or HELLASWAG_PATH), gpt2_encoding().encode_ordinary, block_size)


@torch.no_grad()
def hellaswag_losses(model, encoded, device, ctx, batch_examples=8):
    """The losses of each example's 4 endings, (n, 4) float64 arrays: the summed and the mean token
    loss over the ending's tokens. batch_examples examples (4 rows each) go through model at a time,
    padded on the right: the model is causal, so padding never changes the losses of real tokens."""
    sums, means = [], []
    for first in range(0, len(encoded), batch_examples):
        batch = encoded[first:first + batch_examples]
        rows = [row for rows, _, _ in batch for row in rows]
        width = max(len(r) for r in rows) - 1
        x = torch.zeros((len(rows), width), dtype=torch.long)
        y = torch.full((len(rows), width), -1, dtype=torch.long)  # -1: not an ending token
        for i, (row, start) in enumerate(zip(rows, [s for _, starts, _ in batch for s in starts])):
            x[i, :len(row) - 1] = torch.tensor(row[:-1])
            y[i, start - 1:len(row) - 1] = torch.tensor(row[start:])  # the ending, predicted from one position back
        x, y = x.to(device), y.to(device)
        with ctx:
            logits, _ = model(x, y)  # with targets the model returns the logits of every position
        losses = F.cross_entropy(logits.float().transpose(1, 2), y, ignore_index=-1, reduction='none')
        mask = (y != -1).float()
        total = (losses * mask).sum(dim=1).double()
        sums.append(total.view(-1, 4).cpu())
        means.append((total / mask.sum(dim=1).double()).view(-1, 4).cpu())
    return torch.cat(sums).numpy(), torch.cat(means).numpy()


def hellaswag_accuracy(model, encoded, device, ctx, rank=0, world_size=1, batch_examples=8):
    """acc_norm, acc, the examples right by each and the number of examples, over all of encoded. Under torchrun each rank scores
    every world_size-th example and the counts are summed across ranks; every rank runs the same
    number of forward passes (the short ones repeat an example, uncounted), as FSDP needs."""
    mine = encoded[rank::world_size]
    per_rank = -(-len(encoded) // world_size)
    padded = mine + encoded[:1] * (per_rank - len(mine))
    was_training = model.training
    model.eval()
    sums, means = hellaswag_losses(model, padded, device, ctx, batch_examples)
    model.train(was_training)
    labels = np.array([label for _, _, label in mine], dtype=np.int64)
    n = len(mine)
    counts = torch.tensor([float((means[:n].argmin(1) == labels).sum()), float((sums[:n].argmin(1) == labels).sum()),
                           float(n)], device=device)
    correct_norm, correct, total = distributed.all_reduce_sum(counts).tolist()
    return {'acc_norm': correct_norm / total, 'acc': correct / total, 'right_norm': int(correct_norm),
            'right': int(correct), 'examples': int(total)}
