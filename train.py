"""
Trains a GPT, on one device or on many through torchrun, from scratch, from a checkpoint, or from
GPT-2's weights.

One device (defaults: a GPT-2 124M on OpenWebText):
$ python train.py config/train_shakespeare_char.py --batch_size=32 --compile=False

DDP on 4 GPUs of one node:
$ torchrun --standalone --nproc_per_node=4 train.py
DDP on 2 nodes of 8 GPUs (run on each node, node_rank 0 on the master at 123.456.123.456):
$ torchrun --nproc_per_node=8 --nnodes=2 --node_rank=0 --master_addr=123.456.123.456 --master_port=1234 train.py
(prepend NCCL_IB_DISABLE=1 where the nodes have no InfiniBand)

Log lines: 'iter N: loss X, time Yms, mfu Z%' per log_interval iterations and
'step N: train loss X, val loss Y, eval Ss' per evaluation; README.md explains each field.
"""

import math
import os
import shlex
import signal
import sys
import time

from nanogpt import ScriptError, distributed, exit_on_ctrl_c, interrupted

exit_on_ctrl_c()  # Ctrl-C while starting: one line, exit code 130 (in the training loop: a checkpoint first, see below)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from configurator import configure  # noqa: E402
from nanogpt.checkpoint import (SHAPE_KEYS, check_start, clean_state_dict, configured_optimizer_settings,  # noqa: E402
                                init_model, planned_model, save_checkpoint, shape_warning)
from nanogpt.data import (PADDED_GPT2_VOCAB_SIZE, check_fingerprint, dataset_dir, get_batch,  # noqa: E402
                          get_ordered_batch, load_meta, open_split, row_count, short, tokenizer_fingerprint)
from nanogpt.device import (autocast, compile_model, cuda_graphs_accumulation_error, device_peak_flops,  # noqa: E402
                            format_mfu, keep_freed_host_memory, memory_error, mfu, orthogonalization_dtype,
                            pick_device, pick_dtype, select_sdpa_backend)
from nanogpt.evaluation import hellaswag_accuracy, hellaswag_for_model  # noqa: E402
from nanogpt.files import append_metrics, ckpt_path, claim_out_dir, metrics_path, trim_metrics  # noqa: E402
from nanogpt.training import divergence, train_step  # noqa: E402

# -----------------------------------------------------------------------------
# default config values, designed to train a GPT-2 (124M) on OpenWebText
# I/O
out_dir = 'out'  # checkpoints and metrics.jsonl go here
eval_interval = 2000  # evaluate (and maybe save) every this many iterations
log_interval = 1  # print an 'iter' line every this many iterations
eval_iters = 200  # batches per split in each evaluation
eval_only = False  # if True, exit right after the first evaluation
eval_at_start = True  # evaluate (and score HellaSwag) at the first iteration too, as upstream; False saves that time
always_save_checkpoint = True  # if True, save after each evaluation, not only when val loss improves
hellaswag_interval = 0  # score HellaSwag (acc_norm) every this many iterations and at the end; 0: never
hellaswag_path = ''  # HellaSwag's validation JSONL; '' reads data/hellaswag/hellaswag_val.jsonl (data/hellaswag/prepare.py)
init_from = 'scratch'  # 'scratch', 'resume' (from out_dir), 'gpt2*', or a Hugging Face GPT-2 directory
# wandb logging
wandb_log = False  # log to Weights & Biases (works offline with WANDB_MODE=offline)
wandb_project = 'owt'
wandb_run_name = 'gpt2'
# data
dataset = 'openwebtext'  # data/<dataset>/ with train.bin, val.bin (or shards train_000.bin, ..., val_000.bin) and meta.pkl, or a path to such a folder
gradient_accumulation_steps = 5 * 8  # micro-steps per iteration, to simulate larger batches
batch_size = 12  # micro-batch size
block_size = 1024  # context length
data_order = 'random'  # 'random': windows drawn anywhere in the split (upstream's); 'sequential': the split read in order, one epoch after another
fixed_val_set = False  # True: every evaluation's val loss is over the same first eval_iters x batch_size rows of the val split
# model
n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0  # for pretraining 0 is good, for finetuning try 0.1+
bias = False  # bias inside LayerNorm and Linear layers?
# the modern recipe, each part off by default (docs/recipes.md)
rope = False  # rotary position embeddings in attention instead of learned position embeddings
qk_norm = False  # RMS-normalise each head's queries and keys
mlp_activation = 'gelu'  # 'gelu', or 'relu2' (ReLU squared)
tie_weights = True  # lm_head shares its weights with the token embedding
logit_softcap = 0.0  # logits become logit_softcap * tanh(logits / logit_softcap); 0 is off
zero_init_proj = False  # the projections into the residual stream (and an untied lm_head) start at zero
# optimizer: AdamW, or Muon for the blocks' matrices with AdamW for the rest
optimizer = 'adamw'  # 'adamw' or 'muon'
muon_learning_rate = 0.02  # Muon's max learning rate (optimizer='muon'); learning_rate is AdamW's
muon_momentum = 0.95  # Muon's momentum
learning_rate = 6e-4  # max learning rate
max_iters = 600000  # total number of training iterations
weight_decay = 1e-1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0  # clip gradients at this norm, or disable with 0.0
# learning rate decay settings
decay_lr = True  # cosine decay after a linear warmup
warmup_iters = 2000  # warmup steps
lr_decay_iters = 600000  # should be ~= max_iters per Chinchilla
min_lr = 6e-5  # should be ~= learning_rate/10 per Chinchilla
cooldown_iters = 0  # 0: the cosine; N: constant after the warmup, then straight down to min_lr over the N iterations before lr_decay_iters
# distributed
backend = 'auto'  # 'nccl', 'gloo', or 'auto': nccl on GPUs, gloo on CPUs
fsdp = False  # shard parameters, gradients and optimizer state with FSDP2 (under torchrun)
# system
device = 'auto'  # 'auto' (cuda, then mps, then cpu), 'cpu', 'cuda', 'cuda:0', 'mps'
dtype = 'auto'  # 'auto' (float32 on a CPU, as upstream), 'fast' (also bfloat16 on a CPU that has it natively),
# 'float32', 'bfloat16' or 'float16' (the latter with a GradScaler)
compile = True  # torch.compile the model where that works here
compile_mode = 'default'  # torch.compile mode: 'default', 'reduce-overhead' (CUDA graphs), 'max-autotune'
sdpa_backend = 'auto'  # attention kernels on CUDA: 'auto', 'flash', 'cudnn', 'efficient' or 'math'
seed = 1337  # seeds the model init, the batches and dropout
peak_flops = 0.0  # peak FLOP/s per device for MFU; 0 looks the GPU up in nanogpt/device.py's table
# -----------------------------------------------------------------------------
config = configure(globals(), verbose=int(os.environ.get('RANK', 0)) == 0, positive_ints=(
    'batch_size', 'block_size', 'n_layer', 'n_head', 'n_embd', 'eval_iters', 'eval_interval', 'log_interval',
    'gradient_accumulation_steps'))  # config file, then --key=value overrides
# -----------------------------------------------------------------------------

# check what can be checked before touching the device, the data or the disk
if max_iters < 0 or (max_iters == 0 and not eval_only):
    raise ScriptError(f"max_iters must be a positive integer, got {max_iters!r} (eval_only=True evaluates without training)")
if init_from == 'scratch' and n_embd % n_head:  # GPT() checks it too; here it fails before torchrun's process group
    raise ScriptError(f"n_embd={n_embd} is not divisible by n_head={n_head}")
if decay_lr and min_lr > learning_rate:
    raise ScriptError(f"min_lr={min_lr} is above learning_rate={learning_rate}: the decay would raise the learning "
                      f"rate")
if decay_lr and 0 < lr_decay_iters - warmup_iters < cooldown_iters and int(os.environ.get('RANK', 0)) == 0:
    # legitimate in a short trial of a long recipe, but not the schedule its numbers describe
    print(f"warning: cooldown_iters={cooldown_iters} is longer than the decay window after the warmup (lr_decay_iters - "
          f"warmup_iters = {lr_decay_iters - warmup_iters}): right after the warmup the learning rate drops from "
          f"learning_rate to where the cooldown is then; use cooldown_iters <= {lr_decay_iters - warmup_iters} for a "
          f"constant phase at learning_rate", file=sys.stderr)
world_size = int(os.environ.get('WORLD_SIZE', 1))
if gradient_accumulation_steps % world_size:
    options = ', '.join(str(world_size * k) for k in range(1, 5))
    raise ScriptError(f"gradient_accumulation_steps={gradient_accumulation_steps} does not divide among {world_size} "
                      f"processes; use a multiple of {world_size} ({options}, ...)")
if fsdp and world_size == 1:
    raise ScriptError("fsdp=True shards across processes: start train.py with torchrun --nproc_per_node=N")
if fsdp and optimizer == 'muon':  # Muon orthogonalises whole matrices; FSDP gives each process a slice of them
    raise ScriptError("optimizer='muon' needs whole weight matrices on every process: use it with DDP (fsdp=False)")
device = pick_device(device)
dtype = pick_dtype(device, dtype)
if error := cuda_graphs_accumulation_error(device, compile, compile_mode, gradient_accumulation_steps // world_size):
    raise ScriptError(error)
select_sdpa_backend(sdpa_backend, device, dtype, dropout)
keep_freed_host_memory()  # no page faults for each iteration's buffers on the host

# distributed set-up: each process gets its device; gradient accumulation is shared out among them
rank, local_rank, world_size, device = distributed.setup(backend, device)
distributed.check_same_config(config)  # every process given the same settings (torchrun)
master_process = rank == 0  # logs, evaluates into the log, writes checkpoints
ddp = world_size > 1
gradient_accumulation_steps //= world_size
config.update(device=device, dtype=dtype)
tokens_per_iter = gradient_accumulation_steps * world_size * batch_size * block_size

torch.manual_seed(seed)  # the same initial weights on every rank
torch.backends.cuda.matmul.allow_tf32 = True  # TF32 tensor cores for float32 matmuls
torch.backends.cudnn.allow_tf32 = True
device_type = device.split(':')[0]
ctx = autocast(device, dtype)

# data: the vocabulary from meta.pkl where the dataset has one, else GPT-2's
data_dir = dataset_dir(dataset)
meta = load_meta(data_dir)
fingerprint = tokenizer_fingerprint(meta, data_dir)  # checkpoints record it; reads a 'bpe' dataset's tokenizer file

# the model's shape, known before it is built (out_dir's checkpoint for a resume, GPT-2's for gpt2*),
# checked against the data and the device's memory before anything is allocated or written
model_args = dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size, bias=bias,
                  vocab_size=meta.get('vocab_size', PADDED_GPT2_VOCAB_SIZE), rope=rope, qk_norm=qk_norm,
                  mlp_activation=mlp_activation, tie_weights=tie_weights, logit_softcap=logit_softcap,
                  zero_init_proj=zero_init_proj)
planned, checkpoint = planned_model(init_from, out_dir, model_args)
if checkpoint is not None and 'train_row' in checkpoint and not (type(checkpoint['train_row']) is int
                                                                 and checkpoint['train_row'] >= 0):
    raise ScriptError(f"{out_dir}'s checkpoint holds train_row={short(checkpoint['train_row'])}, not a row number; "
                      f"it is damaged")
if planned is not None and init_from != 'scratch':
    check_start(planned, checkpoint, block_size, meta, dataset, optimizer)
    check_fingerprint(checkpoint, fingerprint, f"dataset {dataset}", "its ids would stand for other text: resume with "
                      "the dataset as it was prepared for this run")
vocab_size = (planned or model_args)['vocab_size']
train_data = open_split(data_dir, 'train', meta, block_size, vocab_size, dataset)
val_data = open_split(data_dir, 'val', meta, block_size, vocab_size, dataset)
if fixed_val_set and row_count(val_data, block_size) < eval_iters * batch_size:
    raise ScriptError(f"fixed_val_set=True evaluates on the first eval_iters x batch_size = {eval_iters * batch_size} "
                      f"rows of {block_size + 1} tokens of the val split, which has {row_count(val_data, block_size)}; "
                      f"lower eval_iters")
if planned is not None and (error := memory_error(device, planned, batch_size, block_size, dtype, train=not eval_only,
                                                  shards=world_size if fsdp else 1)):
    raise ScriptError(error)
if hellaswag_interval:  # read and tokenised once; scored by the uncompiled model, whatever shapes it meets
    hellaswag_examples = hellaswag_for_model(hellaswag_path, vocab_size, block_size)

# wandb: where it cannot log (no API key), stop before anything is written
if wandb_log and master_process:
    try:
        import wandb
    except ImportError:
        raise ScriptError("wandb_log=True needs wandb: pip install wandb")
    if os.environ.get('WANDB_MODE', '').lower() not in ('offline', 'disabled', 'dryrun'):
        try:
            wandb.login(verify=False)  # the API key from WANDB_API_KEY or `wandb login`; nothing is sent
        except Exception as e:
            raise ScriptError(f"wandb cannot log online ({type(e).__name__}: {e}); run `wandb login` (or set "
                              f"WANDB_API_KEY), or log offline with WANDB_MODE=offline and `wandb sync` later")

# out_dir: a new run never replaces one that is there (nor does an evaluation of another model append to
# its metrics), and one run at a time writes into it (rank 0 holds its lock; the other ranks stop with it
# if it is refused)
out_dir_lock = distributed.on_master(master_process, device, claim_out_dir, out_dir, new_run=init_from != 'resume')

# model: from scratch, from out_dir's checkpoint (its shape), or GPT-2's weights; dropout as configured
model, checkpoint = init_model(init_from, out_dir, dropout, model_args, checkpoint)
commands = [shlex.join(['python', *sys.argv]) + (f" (under torchrun, {world_size} processes)" if ddp else '')]
iter_num, best_val_loss, last_eval_iter = 0, 1e9, None
if checkpoint is not None:
    if master_process and (warning := shape_warning(config, planned)):
        print(warning, file=sys.stderr)
    iter_num = int(checkpoint['iter_num'])
    if isinstance(checkpoint.get('commands'), list):  # the command lines before this resume
        commands = [c for c in checkpoint['commands'] if isinstance(c, str)] + commands
    best_val_loss = float(checkpoint['best_val_loss'])
    last_eval_iter = checkpoint.get('last_eval_iter', iter_num)  # upstream saves right after evaluating
# data_order='sequential': iteration it reads the rows_per_iter rows of the training split from
# train_row(it) on (counted past the end: epoch after epoch), micro-batch k of the iteration (numbered
# across the ranks) the batch_size rows from train_row(it) + k * batch_size. A checkpoint saves where
# its next iteration starts, so a resume continues there even with another batch_size.
rows_per_iter = gradient_accumulation_steps * world_size * batch_size
start_iter, start_row = iter_num, iter_num * rows_per_iter
if checkpoint is not None and 'train_row' in checkpoint:
    start_row = checkpoint['train_row']


def train_row(it):
    return start_row + (it - start_iter) * rows_per_iter


if block_size < model.config.block_size:
    model.crop_block_size(block_size)  # e.g. GPT-2's 1024 down to a smaller context
model_args = {k: getattr(model.config, k) for k in (*model_args, 'dropout')}  # what the checkpoint records
config.update({k: model_args[k] for k in SHAPE_KEYS})  # the config saved says the shape the run has
raw_model = model  # the plain GPT: its state_dict has clean names
model.to(device)
flops_per_token = raw_model.flops_per_token(block_size)
if master_process:
    print(f"number of parameters: {raw_model.get_num_params() / 1e6:.2f}M")
    print(f"tokens per iteration will be: {tokens_per_iter:,}")
peak = device_peak_flops(device, dtype, peak_flops, warn=master_process)

# optimizer (after sharding, so that under FSDP it holds the shards), and a GradScaler that is
# active only for float16
if fsdp:
    model = distributed.shard(model)
# from here on optimizer is the optimizer itself; the name configured stays in config['optimizer']
optimizer = raw_model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), device_type,
                                           verbose=master_process, optimizer=optimizer,
                                           muon_learning_rate=muon_learning_rate, muon_momentum=muon_momentum,
                                           muon_ns_dtype=orthogonalization_dtype(device))
scaler = torch.amp.GradScaler(device_type, enabled=(dtype == 'float16'))
if checkpoint is not None:
    with configured_optimizer_settings(optimizer, ckpt_path(out_dir)):  # the state saved, the settings configured
        if fsdp:
            distributed.load_full_state(model, optimizer, clean_state_dict(checkpoint['model']), checkpoint['optimizer'])
        else:
            optimizer.load_state_dict(checkpoint['optimizer'])
        if checkpoint.get('scaler'):
            scaler.load_state_dict(checkpoint['scaler'])
checkpoint = None  # free the memory

if compile:
    if master_process:
        print("compiling the model... (takes a ~minute)")
    model = compile_model(model, device, None if compile_mode == 'default' else compile_mode)
if ddp and not fsdp:
    from torch.nn.parallel import DistributedDataParallel as DDP
    model = DDP(model, device_ids=[local_rank] if device_type == 'cuda' else None)

# seeds: every batch and every dropout mask is a function of (seed, stream, iteration, micro-step), so
# a resumed run continues exactly as the run that never stopped. Micro-steps are numbered across the
# ranks (rank r takes a contiguous range), so N processes draw the batches that one process with N
# times the gradient accumulation would draw.
SEED_TRAIN_BATCHES, SEED_EVAL_BATCHES, SEED_DROPOUT = 0, 1, 2


def batch(it, micro_step):
    """The training batch of a micro-step of iteration it, on the device."""
    k = rank * gradient_accumulation_steps + micro_step
    if data_order == 'sequential':
        return get_ordered_batch(train_data, batch_size, block_size, train_row(it) + k * batch_size, vocab_size, device)
    return get_batch(train_data, batch_size, block_size, (seed, SEED_TRAIN_BATCHES, it, k), vocab_size, device)


def seed_dropout(it, micro_step):
    """Reseeds torch for the dropout masks of a micro-step (about 0.1 ms, so only where there is dropout)."""
    stream = np.random.SeedSequence((seed, SEED_DROPOUT, it, rank * gradient_accumulation_steps + micro_step))
    torch.manual_seed(int(stream.generate_state(1)[0]))


def estimate_loss(it):
    """Mean loss over eval_iters batches of each split: random ones, or for val with fixed_val_set the
    first eval_iters x batch_size rows of the split read in order. The batches are shared out among
    the ranks (every rank works; a rank left without a batch of the fixed set computes one that is not
    counted) and the sums are all-reduced; the host waits for the device once per split."""
    out = {}
    model.eval()
    n_local = -(-eval_iters // world_size)  # equal counts on every rank, as FSDP's collectives need
    # no_grad where FSDP's parameters must stay usable by autograd, and where compiled: CUDA graphs first
    # recorded under inference_mode make the training graph's recording fail (pytorch/pytorch#135892)
    with torch.no_grad() if fsdp or compile else torch.inference_mode():
        for s, (split, data) in enumerate((('train', train_data), ('val', val_data))):
            total = torch.zeros(2, device=device)
            for i in range(n_local):
                k = rank + i * world_size
                if split == 'val' and fixed_val_set:
                    X, Y = get_ordered_batch(data, batch_size, block_size, k % eval_iters * batch_size, vocab_size,
                                             device)
                else:
                    X, Y = get_batch(data, batch_size, block_size, (seed, SEED_EVAL_BATCHES, it, s, k), vocab_size,
                                     device)
                with ctx:
                    _, loss = model(X, Y)
                if k < eval_iters or not (split == 'val' and fixed_val_set):
                    total += torch.stack((loss.float(), torch.ones((), device=device)))
            loss_sum, count = distributed.all_reduce_sum(total).tolist()
            out[split] = loss_sum / count
    model.train()
    return out


# learning rate: a linear warmup from above zero, then a cosine down to min_lr at lr_decay_iters (or,
# with cooldown_iters, constant and then a straight line down: the schedule the GPT-2 speedruns use)
def get_lr(it):
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters or lr_decay_iters <= warmup_iters:
        return min_lr
    if cooldown_iters:
        return min_lr + min(1.0, (lr_decay_iters - it) / cooldown_iters) * (learning_rate - min_lr)
    progress = (it - warmup_iters) / (lr_decay_iters - warmup_iters)  # 0 -> 1
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (learning_rate - min_lr)


ckpt_file = ckpt_path(out_dir)
# what a diverged run suggests lowering (a resume takes the rates configured, see configured_optimizer_settings)
lower_rates = 'learning_rate and muon_learning_rate' if config['optimizer'] == 'muon' else 'learning_rate'


def write_checkpoint(resume_at, evaluated_at):
    """Collective under FSDP (the shards are gathered); rank 0 writes. A run resumed from it starts at
    iteration resume_at."""
    t0 = time.time()
    if fsdp:
        model_sd, optim_sd = distributed.full_state(model, optimizer)
    else:
        model_sd, optim_sd = raw_model.state_dict(), optimizer.state_dict()
    distributed.on_master(master_process, device, save_checkpoint, ckpt_file, {  # a full disk stops every rank
        'model': model_sd,
        'optimizer': optim_sd,
        'scaler': scaler.state_dict() if scaler.is_enabled() else None,
        'model_args': model_args,
        'iter_num': resume_at,
        'best_val_loss': best_val_loss,
        'last_eval_iter': evaluated_at,
        'train_row': train_row(resume_at),  # where data_order='sequential' continues
        'config': config,
        'tokenizer_fingerprint': fingerprint,  # which tokenizer the ids meant (sample.py, export_hf.py compare it)
        'commands': commands,  # the command lines that trained it, for the model card of an export
    })
    return time.time() - t0


# stopping on request: the first Ctrl-C or SIGTERM finishes the iteration and writes a checkpoint,
# a second Ctrl-C exits at once
stop_signal = None


def request_stop(signum, frame):
    global stop_signal
    if stop_signal is not None and signum == signal.SIGINT:
        raise interrupted("interrupted again: exiting now, without a checkpoint")
    stop_signal = signum
    if master_process:
        print(f"\n{signal.Signals(signum).name} received: finishing this iteration, then saving a checkpoint "
              f"(Ctrl-C again to quit at once)", flush=True)


signal.signal(signal.SIGINT, request_stop)
signal.signal(signal.SIGTERM, request_stop)

# metrics.jsonl and wandb: one row per log point; a resumed run's rows replace those of iterations it repeats,
# a new run's replace all; an evaluation of a checkpoint keeps the rows of the iterations after it. A last
# line a crash cut short is mended first
metrics_file = metrics_path(out_dir)
skip_eval_at = last_eval_iter if (last_eval_iter == iter_num and not eval_only) else None
if master_process:
    trim_metrics(metrics_file, None if eval_only and init_from == 'resume' else iter_num,
                 keep_eval_at_resume=skip_eval_at is not None)
if not (eval_at_start or eval_only):
    skip_eval_at = iter_num  # the first iteration of this run is not evaluated
if wandb_log and master_process:
    try:
        wandb.init(project=wandb_project, name=wandb_run_name, config=config)
    except Exception as e:
        raise ScriptError(f"wandb could not start a run ({type(e).__name__}: {e}); log offline with "
                          f"WANDB_MODE=offline (and `wandb sync` later), or set wandb_log=False")
WANDB_NAMES = {'loss': 'iter/loss', 'train_loss': 'train/loss', 'val_loss': 'val/loss'}  # upstream's for the losses


def record(row):
    """Appends a row to metrics.jsonl and sends the same numbers to wandb (MFU in percent there)."""
    if master_process:
        append_metrics(metrics_file, row)
        if wandb_log:
            wandb_row = {WANDB_NAMES.get(k, k): v for k, v in row.items() if k != 'iter'}
            if wandb_row.get('mfu') is not None:
                wandb_row['mfu'] *= 100
            wandb.log(wandb_row, step=row['iter'])


def read_device_stats():
    """Reads the losses and gradient norms queued on the device since the last read (one host-device
    sync), stops the run where nanogpt.training.divergence says it went wrong, and returns the last
    iteration's loss (mean over micro-steps and ranks) and whether any rank was asked to stop."""
    stats = torch.stack([torch.stack((loss, norm)) for _, _, loss, norm in unread_stats])
    # a last row: the stop request and the GradScaler's scale, so that every rank decides alike
    last = torch.tensor([[float(stop_signal is not None), scaler.get_scale()]], device=device)
    values = (distributed.all_reduce_sum(torch.cat((stats, last))) / world_size).tolist()
    rows = [(it, lr_it, loss_it, norm_it) for (it, lr_it, _, _), (loss_it, norm_it) in zip(unread_stats, values)]
    if found := divergence(rows, grad_clip, values[-1][1] if scaler.is_enabled() else None):
        (it, lr_it, _, _), what = found
        raise ScriptError(f"iter {it}: {what} at learning rate {lr_it:.3g}; training stopped and {ckpt_file} is left "
                          f"as it was. Try a lower {lower_rates}, grad_clip=1.0, or dtype=float32/bfloat16")
    unread_stats.clear()
    return values[-2][0], values[-1][0] > 0


# training loop
if iter_num >= max_iters and not eval_only and master_process:
    print(f"the checkpoint is at iteration {iter_num}, max_iters={max_iters}: nothing to train; raise max_iters to go on")
if data_order == 'sequential' and master_process:
    rows = row_count(train_data, block_size)
    print(f"reading the training split in order: {rows:,} rows of {block_size + 1} tokens an epoch, "
          f"{rows_per_iter:,} rows an iteration; iteration {iter_num} starts at row {train_row(iter_num) % rows:,} of "
          f"epoch {train_row(iter_num) // rows + 1}")
X, Y = batch(iter_num, 0)  # fetch the very first batch
local_iter_num = 0  # iterations of this process's lifetime
running_mfu = None  # none until the loop has settled
unread_stats = []  # (iteration, lr, loss, grad norm), the last two still on the device
stop = False  # whether a rank was asked to stop (a signal), as agreed at a log point
t0 = time.time()
iters_timed = 0  # iterations since t0
while True:
    lr = get_lr(iter_num) if decay_lr else learning_rate
    for param_group in optimizer.param_groups:
        param_group['lr'] = lr * param_group.get('lr_scale', 1.0)  # Muon's groups: muon_learning_rate / learning_rate

    # HellaSwag every hellaswag_interval iterations and at the end, the examples shared out among the ranks
    if hellaswag_interval and (iter_num % hellaswag_interval == 0 or iter_num == max_iters or eval_only) \
            and iter_num != skip_eval_at:
        t_eval = time.time()
        scores = hellaswag_accuracy(raw_model, hellaswag_examples, device, ctx, rank, world_size)
        eval_s = time.time() - t_eval
        if master_process:
            print(f"hellaswag {iter_num}: acc_norm {scores['acc_norm']:.4f}, acc {scores['acc']:.4f}, "
                  f"{scores['examples']} examples, {eval_s:.2f}s")
        record({'iter': iter_num, 'hellaswag_acc_norm': scores['acc_norm'], 'hellaswag_acc': scores['acc'],
                'hellaswag_s': eval_s})
        t0, iters_timed = time.time(), 0

    # evaluate, and save a checkpoint, every eval_interval iterations and at the end (eval_only: evaluate, once)
    if (iter_num % eval_interval == 0 or iter_num == max_iters or eval_only) and iter_num != skip_eval_at:
        if unread_stats:
            read_device_stats()  # never save a checkpoint of a diverged model
        t_eval = time.time()
        losses = estimate_loss(iter_num)
        eval_s = time.time() - t_eval
        if not (np.isfinite(losses['train']) and np.isfinite(losses['val'])):
            raise ScriptError(f"step {iter_num}: evaluation loss is not finite (train {losses['train']}, val "
                              f"{losses['val']}); {ckpt_file} is left as it was. Try a lower {lower_rates}, "
                              f"grad_clip=1.0, or dtype=float32/bfloat16")
        improved = losses['val'] < best_val_loss
        best_val_loss = min(best_val_loss, losses['val'])
        if master_process:
            print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}, eval {eval_s:.2f}s")
        record({'iter': iter_num, 'train_loss': losses['train'], 'val_loss': losses['val'], 'eval_s': eval_s, 'lr': lr})
        if iter_num > 0 and not eval_only and (improved or always_save_checkpoint):
            save_s = write_checkpoint(resume_at=iter_num, evaluated_at=iter_num)
            if master_process:
                print(f"saved checkpoint to {ckpt_file} ({save_s:.2f}s)")
        last_eval_iter = iter_num
        t0, iters_timed = time.time(), 0  # evaluation and saving stay out of the iteration times
    if eval_only or iter_num >= max_iters:
        break

    if data_order == 'sequential' and master_process:  # an iteration that reaches the end of the split says so
        first, rows = train_row(iter_num), row_count(train_data, block_size)
        if (first + rows_per_iter - 1) // rows > ((first - 1) // rows if first else 0):
            print(f"epoch {(first + rows_per_iter - 1) // rows + 1}: iteration {iter_num} reads the training split "
                  f"again from its start")

    # forward, backward, update; the next batch is fetched while the device computes
    X, Y, loss, grad_norm = train_step(model, optimizer, scaler, ctx, X, Y, batch=batch, it=iter_num,
                                       micro_steps=gradient_accumulation_steps, grad_clip=grad_clip,
                                       seed_dropout=seed_dropout if dropout > 0 else None)
    unread_stats.append((iter_num, lr, loss, grad_norm))
    iters_timed += 1

    # timing and logging; under DDP a stop request is agreed on at log points, where the ranks meet anyway
    if iter_num % log_interval == 0 or (stop_signal is not None and not ddp):
        lossf, stop = read_device_stats()  # waits for the device, so the clock below is honest
        t1 = time.time()
        dt = (t1 - t0) / iters_timed
        t0, iters_timed = t1, 0
        if peak is not None and local_iter_num >= 5:  # let the loop settle first
            step_mfu = mfu(flops_per_token, tokens_per_iter / world_size, dt, peak)
            running_mfu = step_mfu if running_mfu is None else 0.9 * running_mfu + 0.1 * step_mfu
        if master_process:
            print(f"iter {iter_num}: loss {lossf:.4f}, time {dt * 1000:.2f}ms, mfu {format_mfu(running_mfu)}")
        record({'iter': iter_num, 'loss': lossf, 'lr': lr, 'time_ms': dt * 1000, 'mfu': running_mfu,
                'tokens': (iter_num + 1) * tokens_per_iter})
        if stop:
            save_s = write_checkpoint(resume_at=iter_num + 1, evaluated_at=last_eval_iter)
            if master_process:
                print(f"saved checkpoint at iteration {iter_num + 1} to {ckpt_file} ({save_s:.2f}s); to resume, run "
                      f"the same command with --init_from=resume", flush=True)
            break
    iter_num += 1
    local_iter_num += 1

if wandb_log and master_process:
    wandb.finish()
# the DDP wrapper (its reducer) holds the process group: it goes first, so that the group is freed while
# the interpreter is whole (freed at its exit, gloo's threads could abort the process, exit code -6)
model = optimizer = None
distributed.teardown()
if stop:  # asked to stop (a signal on any rank): the exit code says which signal
    sys.exit(128 + (stop_signal or signal.SIGTERM))
