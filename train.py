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
import signal
import sys
import time

from nanogpt import ScriptError, distributed, exit_on_ctrl_c

exit_on_ctrl_c()  # Ctrl-C while starting: one line, exit code 130 (in the training loop: a checkpoint first, see below)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from configurator import configure  # noqa: E402
from nanogpt.checkpoint import (SHAPE_KEYS, check_start, command_lines, init_model, load_optimizer_state,  # noqa: E402
                                planned_model, save_checkpoint, shape_warning)
from nanogpt.data import (PADDED_GPT2_VOCAB_SIZE, check_fixed_val_set, dataset_dir, epoch_begun,  # noqa: E402
                          get_batch, get_ordered_batch, load_meta, open_split, row_count, tokenizer_fingerprint)
from nanogpt.device import (autocast, compile_model, cuda_graphs_accumulation_error, device_peak_flops,  # noqa: E402
                            format_mfu, keep_freed_host_memory, memory_error, mfu, orthogonalization_dtype,
                            pick_device, pick_dtype, select_sdpa_backend)
from nanogpt.evaluation import estimate_loss, hellaswag_accuracy, hellaswag_for_model  # noqa: E402
from nanogpt.files import (check_wandb, ckpt_path, claim_out_dir, metrics_path, record, start_wandb,  # noqa: E402
                           trim_metrics)
from nanogpt.training import (catch_stop_signals, check_settings, dropout_seeder, read_device_stats,  # noqa: E402
                              train_step)

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

world_size = int(os.environ.get('WORLD_SIZE', 1))
check_settings(config, world_size)  # what can be checked before touching the device, the data or the disk
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
torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # TF32 tensor cores for float32
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
if planned is not None and init_from != 'scratch':
    check_start(planned, checkpoint, block_size, meta, dataset, optimizer, fingerprint)
vocab_size = (planned or model_args)['vocab_size']
train_data = open_split(data_dir, 'train', meta, block_size, vocab_size, dataset)
val_data = open_split(data_dir, 'val', meta, block_size, vocab_size, dataset)
if fixed_val_set:
    check_fixed_val_set(val_data, block_size, eval_iters * batch_size)
if planned is not None and (error := memory_error(device, planned, batch_size, block_size, dtype, train=not eval_only,
                                                  shards=world_size if fsdp else 1)):
    raise ScriptError(error)
if hellaswag_interval:  # read and tokenised once; scored by the uncompiled model, whatever shapes it meets
    hellaswag_examples = hellaswag_for_model(hellaswag_path, vocab_size, block_size)
wandb = check_wandb() if wandb_log and master_process else None  # where it cannot log, before anything is written

# out_dir: a new run never replaces one that is there (nor does an evaluation of another model append to its
# metrics); one run at a time writes into it (rank 0 holds its lock, the other ranks stop where it is refused)
out_dir_lock = distributed.on_master(master_process, device, claim_out_dir, out_dir, new_run=init_from != 'resume')

# model: from scratch, from out_dir's checkpoint (its shape), or GPT-2's weights; dropout as configured
model, checkpoint = init_model(init_from, out_dir, dropout, model_args, checkpoint)
commands = command_lines(checkpoint, world_size)  # the command lines that trained it, this one last
iter_num, best_val_loss, last_eval_iter = 0, 1e9, None
if checkpoint is not None:
    if master_process and (warning := shape_warning(config, planned)):
        print(warning, file=sys.stderr)
    iter_num = int(checkpoint['iter_num'])
    best_val_loss = float(checkpoint['best_val_loss'])
    last_eval_iter = checkpoint.get('last_eval_iter', iter_num)  # upstream saves right after evaluating
# data_order='sequential': iteration it reads rows_per_iter rows of the training split from train_row(it)
# on (epoch after epoch), micro-step k (numbered across the ranks) batch_size of them from train_row(it) +
# k * batch_size; a checkpoint saves where its next iteration starts (another batch_size resumes there too)
rows_per_iter = gradient_accumulation_steps * world_size * batch_size
start_iter, start_row = iter_num, (checkpoint or {}).get('train_row', iter_num * rows_per_iter)


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
# active only for float16; a resume loads their states, and takes the settings configured now
if fsdp:
    model = distributed.shard(model)
# from here on optimizer is the optimizer itself; the name configured stays in config['optimizer']
optimizer = raw_model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), device_type,
                                           verbose=master_process, optimizer=optimizer,
                                           muon_learning_rate=muon_learning_rate, muon_momentum=muon_momentum,
                                           muon_ns_dtype=orthogonalization_dtype(device))
scaler = torch.amp.GradScaler(device_type, enabled=(dtype == 'float16'))
if checkpoint is not None:
    load_optimizer_state(checkpoint, ckpt_path(out_dir), optimizer, scaler, model if fsdp else None)
checkpoint = None  # free the memory

if compile:
    if master_process:
        print("compiling the model... (takes a ~minute)")
    model = compile_model(model, device, None if compile_mode == 'default' else compile_mode)
if ddp and not fsdp:
    from torch.nn.parallel import DistributedDataParallel as DDP
    model = DDP(model, device_ids=[local_rank] if device_type == 'cuda' else None)

# seeds: every batch and dropout mask is a function of (seed, stream, iteration, micro-step), so a resumed run
# goes on as the one that never stopped; micro-steps are numbered across the ranks (rank r takes a contiguous
# range), so N processes draw the batches one process with N times the gradient accumulation would draw
SEED_TRAIN_BATCHES, SEED_EVAL_BATCHES, SEED_DROPOUT = 0, 1, 2
seed_dropout = dropout_seeder(seed, SEED_DROPOUT, rank * gradient_accumulation_steps) if dropout > 0 else None


def batch(it, micro_step):
    """The training batch of a micro-step of iteration it, on the device."""
    k = rank * gradient_accumulation_steps + micro_step
    if data_order == 'sequential':
        return get_ordered_batch(train_data, batch_size, block_size, train_row(it) + k * batch_size, vocab_size, device)
    return get_batch(train_data, batch_size, block_size, (seed, SEED_TRAIN_BATCHES, it, k), vocab_size, device)


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
# what a run that went wrong leaves and suggests (a resume takes the rates configured then)
rates = 'learning_rate and muon_learning_rate' if config['optimizer'] == 'muon' else 'learning_rate'
advice = f"{ckpt_file} is left as it was. Try a lower {rates}, grad_clip=1.0, or dtype=float32/bfloat16"


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


# stopping on request: Ctrl-C or SIGTERM finishes the iteration and writes a checkpoint; a second Ctrl-C exits
stop_signals = catch_stop_signals(announce=master_process)

# metrics.jsonl and wandb: one row per log point; a resumed run's rows replace those of iterations it repeats, a
# new run's all, an evaluation of a checkpoint none; a last line a crash cut short is mended first
metrics_file = metrics_path(out_dir)
skip_eval_at = last_eval_iter if (last_eval_iter == iter_num and not eval_only) else None
if master_process:
    trim_metrics(metrics_file, None if eval_only and init_from == 'resume' else iter_num,
                 keep_eval_at_resume=skip_eval_at is not None)
if not (eval_at_start or eval_only):
    skip_eval_at = iter_num  # the first iteration of this run is not evaluated
if wandb is not None:
    start_wandb(wandb, wandb_project, wandb_run_name, config)

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
t0, iters_timed = time.time(), 0  # iterations since t0
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
            record(metrics_file, {'iter': iter_num, 'hellaswag_acc_norm': scores['acc_norm'],
                                  'hellaswag_acc': scores['acc'], 'hellaswag_s': eval_s}, wandb)
        t0, iters_timed = time.time(), 0

    # evaluate, and save a checkpoint, every eval_interval iterations and at the end (eval_only: evaluate, once)
    if (iter_num % eval_interval == 0 or iter_num == max_iters or eval_only) and iter_num != skip_eval_at:
        if unread_stats:  # never save a checkpoint of a diverged model
            read_device_stats(unread_stats, bool(stop_signals), scaler, device, world_size, grad_clip, advice)
        t_eval = time.time()
        losses = estimate_loss(model, {'train': train_data, 'val': val_data}, eval_iters, batch_size, block_size,
                               vocab_size, device, ctx, (seed, SEED_EVAL_BATCHES, iter_num), rank, world_size,
                               fixed_val_set, inference_mode=not (fsdp or compile))
        eval_s = time.time() - t_eval
        if not (np.isfinite(losses['train']) and np.isfinite(losses['val'])):
            raise ScriptError(f"step {iter_num}: evaluation loss is not finite (train {losses['train']}, val "
                              f"{losses['val']}); {advice}")
        improved = losses['val'] < best_val_loss
        best_val_loss = min(best_val_loss, losses['val'])
        if master_process:
            print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}, eval {eval_s:.2f}s")
            record(metrics_file, {'iter': iter_num, 'train_loss': losses['train'], 'val_loss': losses['val'],
                                  'eval_s': eval_s, 'lr': lr}, wandb)
        if iter_num > 0 and not eval_only and (improved or always_save_checkpoint):
            save_s = write_checkpoint(resume_at=iter_num, evaluated_at=iter_num)
            if master_process:
                print(f"saved checkpoint to {ckpt_file} ({save_s:.2f}s)")
        last_eval_iter = iter_num
        t0, iters_timed = time.time(), 0  # evaluation and saving stay out of the iteration times
    if eval_only or iter_num >= max_iters:
        break

    # an iteration that reaches the end of the split (data_order='sequential') says so
    if data_order == 'sequential' and master_process and \
            (epoch := epoch_begun(train_row(iter_num), rows_per_iter, row_count(train_data, block_size))):
        print(f"epoch {epoch}: iteration {iter_num} reads the training split again from its start")

    # forward, backward, update; the next batch is fetched while the device computes
    X, Y, loss, grad_norm = train_step(model, optimizer, scaler, ctx, X, Y, batch=batch, it=iter_num,
                                       micro_steps=gradient_accumulation_steps, grad_clip=grad_clip,
                                       seed_dropout=seed_dropout)
    unread_stats.append((iter_num, lr, loss, grad_norm))
    iters_timed += 1

    # timing and logging; under DDP a stop request is agreed on at log points, where the ranks meet anyway
    if iter_num % log_interval == 0 or (stop_signals and not ddp):
        # reading the stats waits for the device, so the clock below is honest
        lossf, stop = read_device_stats(unread_stats, bool(stop_signals), scaler, device, world_size, grad_clip,
                                        advice)
        t1 = time.time()
        dt = (t1 - t0) / iters_timed
        t0, iters_timed = t1, 0
        if peak is not None and local_iter_num >= 5:  # let the loop settle first
            step_mfu = mfu(flops_per_token, tokens_per_iter / world_size, dt, peak)
            running_mfu = step_mfu if running_mfu is None else 0.9 * running_mfu + 0.1 * step_mfu
        if master_process:
            print(f"iter {iter_num}: loss {lossf:.4f}, time {dt * 1000:.2f}ms, mfu {format_mfu(running_mfu)}")
            record(metrics_file, {'iter': iter_num, 'loss': lossf, 'lr': lr, 'time_ms': dt * 1000, 'mfu': running_mfu,
                                  'tokens': (iter_num + 1) * tokens_per_iter}, wandb)
        if stop:
            save_s = write_checkpoint(resume_at=iter_num + 1, evaluated_at=last_eval_iter)
            if master_process:
                print(f"saved checkpoint at iteration {iter_num + 1} to {ckpt_file} ({save_s:.2f}s); to resume, run "
                      f"the same command with --init_from=resume", flush=True)
            break
    iter_num += 1
    local_iter_num += 1

if wandb is not None:
    wandb.finish()
# the DDP wrapper (its reducer) holds the process group: dropped first, the group is freed while the
# interpreter is whole (at its exit, gloo's threads could abort the process: exit code -6)
model = optimizer = None
distributed.teardown()
if stop:  # asked to stop (a signal on any rank): the exit code says which signal
    sys.exit(128 + (stop_signals[-1] if stop_signals else signal.SIGTERM))
