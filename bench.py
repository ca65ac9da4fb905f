"""
Times the training step alone (the same model, batches, step, timing and MFU code as train.py), for
profiling and MFU. Runs on CPU, MPS and CUDA.
$ python bench.py                                  # GPT-2 124M, batch 12, block 1024
$ python bench.py --device=cpu --n_layer=4 --n_head=4 --n_embd=128 --block_size=64 --compile=False
The last line is always: time per iteration: Xms, MFU: Y%, Z tokens/s
"""

import os
import time

import torch

from configurator import configure
from nanogpt import ScriptError
from nanogpt.checkpoint import init_model
from nanogpt.data import PADDED_GPT2_VOCAB_SIZE, dataset_dir, get_batch, load_meta, open_split
from nanogpt.device import (autocast, compile_model, cuda_graphs_accumulation_error, device_peak_flops, format_mfu,
                            bfloat16_reason, keep_freed_host_memory, memory_error, mfu, orthogonalization_dtype,
                            pick_device, pick_dtype, select_sdpa_backend, synchronize)
from nanogpt.training import train_step

# -----------------------------------------------------------------------------
batch_size = 12
block_size = 1024
n_layer = 12
n_head = 12
n_embd = 768
bias = False
dropout = 0.0
rope = False  # the modern recipe's model keys, as in train.py (docs/recipes.md)
qk_norm = False
mlp_activation = 'gelu'
tie_weights = True
logit_softcap = 0.0
optimizer = 'adamw'  # 'adamw' or 'muon', as in train.py
real_data = True  # batches from data/<dataset>/train.bin; False: one fixed random batch
dataset = 'openwebtext'
gradient_accumulation_steps = 1
grad_clip = 1.0  # as train.py's default, so the step timed is the step trained
seed = 1337
device = 'auto'  # 'auto', 'cpu', 'cuda', 'cuda:0', 'mps'
dtype = 'auto'  # 'auto', 'fast' (bfloat16 also on a CPU that has it natively), 'float32', 'bfloat16' or 'float16'
compile = True  # torch.compile the model
compile_mode = 'default'  # torch.compile mode: 'default', 'reduce-overhead' (CUDA graphs), 'max-autotune'
sdpa_backend = 'auto'  # attention kernels on CUDA: 'auto', 'flash', 'cudnn', 'efficient' or 'math'
peak_flops = 0.0  # peak FLOP/s of the device for MFU; 0 looks the GPU up in nanogpt/device.py's table
burnin = 10  # untimed steps first (compilation, allocator warm-up)
num_steps = 20  # timed steps
profile = False  # write a torch.profiler trace instead of timing
profile_dir = 'bench_log'  # where the trace goes
# -----------------------------------------------------------------------------
configure(globals(), positive_ints=('batch_size', 'block_size', 'n_layer', 'n_head', 'n_embd',
                                    'gradient_accumulation_steps', 'num_steps'))
device = pick_device(device)
dtype = pick_dtype(device, dtype)
if error := cuda_graphs_accumulation_error(device, compile, compile_mode, gradient_accumulation_steps):
    raise ScriptError(error)
select_sdpa_backend(sdpa_backend, device, dtype, dropout)
keep_freed_host_memory()  # no page faults for each iteration's buffers on the host
torch.manual_seed(seed)
torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True
device_type = device.split(':')[0]
ctx = autocast(device, dtype)

# data: real batches as train.py draws them, or one fixed random batch; the memory is checked before
# either is allocated, or anything else
vocab_size = PADDED_GPT2_VOCAB_SIZE
if real_data:
    data_dir = dataset_dir(dataset)
    meta = load_meta(data_dir)
    vocab_size = meta.get('vocab_size', PADDED_GPT2_VOCAB_SIZE)
model_args = dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size, bias=bias, vocab_size=vocab_size,
                  rope=rope, qk_norm=qk_norm, mlp_activation=mlp_activation, tie_weights=tie_weights,
                  logit_softcap=logit_softcap)
if error := memory_error(device, model_args, batch_size, block_size, dtype):
    raise ScriptError(error)
if profile:  # where the trace goes, made now rather than once the steps have run
    try:
        os.makedirs(profile_dir, exist_ok=True)
    except OSError as e:
        raise ScriptError(f"cannot create profile_dir {profile_dir}: {e.strerror or e}")
if real_data:
    train_data = open_split(data_dir, 'train', meta, block_size, vocab_size, dataset)

    def batch(it, micro_step):
        return get_batch(train_data, batch_size, block_size, (seed, 0, it, micro_step), vocab_size, device)
else:
    fixed = (torch.randint(vocab_size, (batch_size, block_size), device=device),
             torch.randint(vocab_size, (batch_size, block_size), device=device))

    def batch(it, micro_step):
        return fixed

model, _ = init_model('scratch', '', dropout, model_args)
model.to(device)
optimizer = model.configure_optimizers(weight_decay=1e-2, learning_rate=1e-4, betas=(0.9, 0.95), device_type=device_type,
                                       optimizer=optimizer, muon_ns_dtype=orthogonalization_dtype(device))
scaler = torch.amp.GradScaler(device_type, enabled=(dtype == 'float16'))
flops_per_token = model.flops_per_token(block_size)
tokens_per_iter = gradient_accumulation_steps * batch_size * block_size
print(f"number of parameters: {model.get_num_params() / 1e6:.2f}M, tokens per iteration: {tokens_per_iter:,}")
if device_type == 'cpu':  # CPU figures depend on these: bfloat16 is several times slower where it is emulated
    print(f"cpu: {bfloat16_reason(device)}; torch's kernels: {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} threads")
peak = device_peak_flops(device, dtype, peak_flops, warn=True)
if compile:
    print("compiling the model...")
    model = compile_model(model, device, None if compile_mode == 'default' else compile_mode)

X, Y = batch(0, 0)
iter_num = 0


def step():
    global X, Y, iter_num
    X, Y, loss, _ = train_step(model, optimizer, scaler, ctx, X, Y, batch=batch, it=iter_num,
                               micro_steps=gradient_accumulation_steps, grad_clip=grad_clip)
    iter_num += 1
    return loss


if profile:
    # a trace of a few steps, for TensorBoard's profiler plugin or chrome://tracing / perfetto
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device_type == 'cuda':
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    wait, warmup, active = 5, 5, 5
    with torch.profiler.profile(
            activities=activities,
            schedule=torch.profiler.schedule(wait=wait, warmup=warmup, active=active, repeat=1),
            on_trace_ready=torch.profiler.tensorboard_trace_handler(profile_dir),
            record_shapes=False, profile_memory=False, with_stack=False) as prof:
        for _ in range(wait + warmup + active):
            step()
            synchronize(device)
            prof.step()
    print(f"profiler trace written to {os.path.abspath(profile_dir)}")

for _ in range(burnin):
    step()
synchronize(device)
t0 = time.time()
losses = [step() for _ in range(num_steps)]
losses = torch.stack(losses).tolist()  # waits for the device: the clock reads after the work is done
dt = (time.time() - t0) / num_steps
print(f"losses over the timed steps: first {losses[0]:.4f}, last {losses[-1]:.4f}")
value = mfu(flops_per_token, tokens_per_iter, dt, peak) if peak is not None else None
print(f"time per iteration: {dt * 1000:.2f}ms, MFU: {format_mfu(value)}, {tokens_per_iter / dt:.0f} tokens/s")
