"""
Device concerns shared by train.py, bench.py and sample.py: which device and dtype to use,
autocast, synchronisation, torch.compile with a fallback, and the GPU peak-FLOPs table behind MFU.
"""

import ctypes
import os
import platform
import re
import sys
from contextlib import nullcontext

import torch

from nanogpt import ScriptError

DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}

# Dense (not sparse) peak FLOP/s per GPU: the tensor-core rate for bfloat16 and float16 with float32
# accumulation (what PyTorch's matmuls use), and the TF32 tensor-core rate for float32, which train.py
# allows. None where the GPU has no such rate. Datasheets list sparse rates as well: halve those.
# The patterns are tried in order against the lower-cased torch.cuda.get_device_name(), so the more
# specific ones come first, and \b and $ keep 'l4' out of 'l40s', 'a10' out of 'a100', 'h20' out of 'h200'.
T = 1e12
GPU_PEAK_FLOPS = [
    # (pattern, bfloat16, float16, float32 via TF32)
    # NVIDIA A100 datasheet: BF16/FP16 312, TF32 156 (SXM4 and PCIe, 40 and 80 GB)
    (r'\ba100\b', 312 * T, 312 * T, 156 * T),
    # NVIDIA A800 datasheets: BF16/FP16 312, TF32 156 (dense), the A100's rates (SXM4, PCIe, 40GB Active)
    (r'\ba800\b', 312 * T, 312 * T, 156 * T),
    # NVIDIA H100 datasheet: H100 NVL BF16/FP16 1,671 and TF32 835 with sparsity
    (r'\bh100\b.*\bnvl\b', 835.5 * T, 835.5 * T, 417.5 * T),
    # NVIDIA H100 datasheet: H100 PCIe BF16/FP16 1,513 and TF32 756 with sparsity
    (r'\bh100\b.*\bpcie\b', 756.5 * T, 756.5 * T, 378 * T),
    # NVIDIA H100 datasheet: H100 SXM BF16/FP16 1,979 and TF32 989 with sparsity ("H100 80GB HBM3")
    (r'\bh100\b', 989.4 * T, 989.4 * T, 494.7 * T),
    # NVIDIA H200 datasheet: H200 NVL BF16/FP16 1,671 and TF32 835 with sparsity
    (r'\bh200\b.*\bnvl\b', 835.5 * T, 835.5 * T, 417.5 * T),
    # NVIDIA H200 datasheet: H200 SXM BF16/FP16 1,979 and TF32 989 with sparsity, as H100 SXM
    (r'\bh200\b', 989.4 * T, 989.4 * T, 494.7 * T),
    # NVIDIA GH200 Grace Hopper datasheet: the GPU at BF16/FP16 1,979 and TF32 989 with sparsity, as H100
    # SXM ("NVIDIA GH200 480GB", "NVIDIA GH200 144G HBM3e"; \b keeps it apart from h200)
    (r'\bgh200\b', 989.4 * T, 989.4 * T, 494.7 * T),
    # NVIDIA H800 product brief: the PCIe card as H100 PCIe, the SXM part as H100 SXM
    (r'\bh800\b.*\bpcie\b', 756.5 * T, 756.5 * T, 378 * T),
    (r'\bh800\b', 989.4 * T, 989.4 * T, 494.7 * T),
    # NVIDIA H20 product brief: BF16/FP16 148, TF32 74 (dense)
    (r'\bh20\b', 148 * T, 148 * T, 74 * T),
    # NVIDIA GB200 NVL72 datasheet: per GPU BF16/FP16 5 PF and TF32 2.5 PF with sparsity
    (r'\bgb200\b', 2500 * T, 2500 * T, 1250 * T),
    # NVIDIA HGX B200 datasheet: per GPU BF16/FP16 4.5 PF and TF32 2.25 PF with sparsity
    (r'\bb200\b', 2250 * T, 2250 * T, 1125 * T),
    # NVIDIA HGX B300 datasheet: 8 GPUs at BF16/FP16 36 PF and TF32 18 PF with sparsity, per GPU as B200
    # ("NVIDIA B300 SXM6 AC")
    (r'\bb300\b', 2250 * T, 2250 * T, 1125 * T),
    # NVIDIA L40S datasheet: BF16/FP16 733 and TF32 366 with sparsity
    (r'\bl40s\b', 366 * T, 366 * T, 183 * T),
    # NVIDIA L40 datasheet: BF16/FP16 181.05, TF32 90.5 (dense)
    (r'\bl40\b', 181.05 * T, 181.05 * T, 90.5 * T),
    # NVIDIA L4 datasheet: BF16/FP16 242 and TF32 120 with sparsity
    (r'\bl4\b', 121 * T, 121 * T, 60 * T),
    # AWS G5 / NVIDIA A10G: BF16/FP16 70, TF32 35 (dense); lower tensor clocks than the A10
    (r'\ba10g\b', 70 * T, 70 * T, 35 * T),
    # NVIDIA A10 datasheet: BF16/FP16 125, TF32 62.5 (dense)
    (r'\ba10\b', 125 * T, 125 * T, 62.5 * T),
    # NVIDIA A30 datasheet: BF16/FP16 165, TF32 82 (dense)
    (r'\ba30\b', 165 * T, 165 * T, 82 * T),
    # NVIDIA A40 datasheet: BF16/FP16 149.7, TF32 74.8 (dense)
    (r'\ba40\b', 149.7 * T, 149.7 * T, 74.8 * T),
    # NVIDIA RTX A6000 datasheet: 309.7 tensor TFLOPS with sparsity; 84 SMs x 1024 FLOP/clk x 1.80 GHz
    (r'\brtx a6000\b', 154.8 * T, 154.8 * T, 77.4 * T),
    # Ada whitepaper: RTX 6000 Ada Generation BF16/FP16 (FP32 acc, full rate on this card) 364.2, TF32 182.1
    # (dense); its datasheet's 1,457 TFLOPS are FP8 with sparsity. ('Quadro RTX 6000', Turing, has no 'ada'.)
    (r'\brtx 6000 ada\b', 364.2 * T, 364.2 * T, 182.1 * T),
    # NVIDIA V100 datasheet: FP16 tensor 130 (V100S), 112 (PCIe), 125 (SXM2); no BF16 or TF32
    (r'\bv100s\b', None, 130 * T, None),
    (r'\bv100\b.*\bpcie\b', None, 112 * T, None),
    (r'\bv100\b', None, 125 * T, None),
    # NVIDIA T4 datasheet: FP16 tensor 65; no BF16 or TF32
    (r'\bt4\b', None, 65 * T, None),
    # GeForce: the rate with float32 accumulate, half the FP16-accumulate rate on these cards.
    # Ampere GA10x whitepaper: RTX 3090 BF16/FP16 (FP32 acc) 71, TF32 35.6 (dense)
    (r'\brtx 3090$', 71 * T, 71 * T, 35.6 * T),
    # RTX 3090 Ti: GA102, 84 SMs x 512 FLOP/clk (FP32 acc) x 1.86 GHz boost, by the GA10x whitepaper's rates
    (r'\brtx 3090 ti$', 80 * T, 80 * T, 40 * T),
    # RTX 3060: GA106, 28 SMs x 512 FLOP/clk (FP32 acc) x 1.777 GHz boost, by the GA10x whitepaper's rates
    (r'\brtx 3060$', 25.5 * T, 25.5 * T, 12.7 * T),
    # Ada whitepaper: RTX 4090 BF16/FP16 (FP32 acc) 165.2, TF32 82.6 (dense)
    (r'\brtx 4090$', 165.2 * T, 165.2 * T, 82.6 * T),
    # Blackwell GeForce whitepaper: RTX 5090 BF16/FP16 (FP32 acc) 209.5, TF32 104.8 (dense)
    (r'\brtx 5090$', 209.5 * T, 209.5 * T, 104.8 * T),
]


def peak_flops(device_name, dtype):
    """Dense peak FLOP/s of the GPU named as torch.cuda.get_device_name() names it, for 'bfloat16',
    'float16' or 'float32' (TF32 tensor cores); None for an unknown GPU or a dtype it has no rate for."""
    column = {'bfloat16': 1, 'float16': 2, 'float32': 3}[dtype]
    name = device_name.lower().strip()
    for row in GPU_PEAK_FLOPS:
        if re.search(row[0], name):
            return row[column]
    return None


def device_peak_flops(device, dtype, override=0.0, warn=False):
    """The peak that MFU is measured against: the user's peak_flops when set, else the table's
    entry for this GPU, else None (and with warn, one line that says how to set it)."""
    if override:
        return float(override)
    peak = peak_flops(torch.cuda.get_device_name(device), dtype) if device.startswith('cuda') else None
    if peak is None and warn:
        print(f"warning: no peak FLOP/s known for this device ({device}, {dtype}), so MFU shows as n/a; "
              f"set --peak_flops=FLOPS (per device) to measure against your hardware's peak")
    return peak


def mfu(flops_per_token, tokens_per_iter, seconds_per_iter, peak):
    """Model FLOPs utilisation: the FLOP/s the model's math needs at this speed over the peak."""
    return flops_per_token * tokens_per_iter / seconds_per_iter / peak


def format_mfu(value):
    return 'n/a' if value is None else f"{value * 100:.2f}%"


def pick_device(requested):
    """'auto' (or '') picks cuda, then mps, then cpu; anything else is checked."""
    if requested in ('', 'auto'):
        if torch.cuda.is_available():
            return 'cuda'
        if hasattr(torch.backends, 'mps') and torch.backends.mps.is_available():
            return 'mps'
        return 'cpu'
    kind = requested.split(':')[0]
    if kind not in ('cpu', 'cuda', 'mps') or (kind != 'cuda' and ':' in requested):
        raise ScriptError(f"unknown device {requested!r}; use auto, cpu, cuda, cuda:N or mps")
    if kind == 'cuda':
        if not torch.cuda.is_available():
            raise ScriptError(f"device {requested!r} asked for, but this torch sees no CUDA GPU; use device=cpu (or auto)")
        index = requested.partition(':')[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise ScriptError(f"no GPU {requested!r}: this machine has {torch.cuda.device_count()}")
    if kind == 'mps' and not (hasattr(torch.backends, 'mps') and torch.backends.mps.is_available()):
        raise ScriptError("device 'mps' asked for, but MPS is not available here; use device=cpu (or auto)")
    return requested


def cuda_has_bfloat16(device):
    """Whether this GPU computes in bfloat16 natively: compute capability 8.0 (Ampere) or later, or a
    ROCm GPU. torch.cuda.is_bf16_supported() also says yes where bfloat16 is only emulated (V100, T4):
    slowly, and without a tensor-core rate to measure MFU against."""
    return bool(torch.version.hip) or torch.cuda.get_device_capability(device) >= (8, 0)


def pick_dtype(device, requested):
    """'auto' picks bfloat16 on GPUs that have it natively, float16 (with a GradScaler) on older GPUs,
    float32 elsewhere, as upstream does; 'fast' also picks bfloat16 on a CPU that computes it natively,
    and says which it picked and why. An explicit choice is checked against what the device can do."""
    kind = device.split(':')[0]
    if requested in ('', 'auto', 'fast'):
        if kind == 'cuda':
            return 'bfloat16' if cuda_has_bfloat16(device) else 'float16'
        if requested != 'fast':
            return 'float32'
        picked = 'bfloat16' if native_bfloat16(device) else 'float32'
        if int(os.environ.get('RANK', 0)) == 0:
            print(f"dtype: {picked} (dtype='fast': {bfloat16_reason(device)})")
        return picked
    if requested not in DTYPES:
        raise ScriptError(f"unknown dtype {requested!r}; use auto, fast, float32, bfloat16 or float16")
    if kind == 'cuda' and requested == 'bfloat16' and not cuda_has_bfloat16(device):
        name = torch.cuda.get_device_name(device)
        if not torch.cuda.is_bf16_supported():
            raise ScriptError(f"this GPU ({name}) has no bfloat16; use dtype=float16")
        print(f"warning: this GPU ({name}) only emulates bfloat16 (native from compute capability 8.0, Ampere), so "
              f"dtype=bfloat16 is likely slow here; dtype=float16 (with a GradScaler) is what auto picks", file=sys.stderr)
    if kind == 'cpu' and requested == 'float16':
        raise ScriptError("float16 training needs a GPU; on cpu use dtype=float32 or bfloat16")
    if kind == 'cpu' and requested == 'bfloat16' and not cpu_has_native_bfloat16():
        print(f"warning: {bfloat16_reason(device)}, so dtype=bfloat16 is likely several times slower than float32 "
              f"here; dtype=fast picks what this CPU computes fastest", file=sys.stderr)
    if kind == 'mps' and requested == 'bfloat16':
        raise ScriptError("bfloat16 autocast is not supported on mps here; use dtype=float32")
    return requested


def keep_freed_host_memory():
    """Asks glibc's malloc to keep freed memory for reuse. By default it gives blocks over 128 KiB
    straight back to the kernel (and trims the heap's top), and the next iteration faults them back
    in, zero-filled: on a 2-core CPU about 2,000 page faults and several ms of a bfloat16 step of the
    CPU config. Returns False where there is no glibc mallopt (macOS, Windows); nothing changes then."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    # blocks up to 64 MiB come from the heap; up to 512 MiB of free heap top is kept
    return bool(mallopt(M_MMAP_THRESHOLD, 64 << 20)) and bool(mallopt(M_TRIM_THRESHOLD, 512 << 20))


def cpu_name():
    """The CPU's model name as the OS gives it ('AMD EPYC 9R14', ...), or the architecture."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_bfloat16_features():
    """The instructions this CPU has for bfloat16 matmuls, by name (x86 only; [] where torch cannot tell)."""
    checks = (('AVX-512-BF16', '_is_avx512_bf16_supported'), ('AMX', '_is_amx_tile_supported'))
    return [name for name, check in checks if getattr(torch.cpu, check, lambda: False)()]


def cpu_has_native_bfloat16():
    """Whether this CPU computes bfloat16 matmuls natively, and torch's oneDNN uses that: on x86, AVX-512-BF16
    or AMX (Intel from Cooper Lake and Sapphire Rapids, AMD from Zen 4); on Arm, its BF16 extension. Without
    them torch emulates bfloat16, several times slower than float32 (oneDNN's ONEDNN_MAX_CPU_ISA=AVX2
    makes a CPU that has them behave as one without)."""
    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
    except (AttributeError, RuntimeError):  # a torch without the check: only the instructions can tell
        pass
    if platform.machine().lower() in ('x86_64', 'amd64', 'i386', 'i686'):
        return bool(cpu_bfloat16_features())
    return True


def native_bfloat16(device):
    """Whether the device computes bfloat16 natively: then dtype='fast' trains in it."""
    kind = device.split(':')[0]
    if kind == 'cuda':
        return cuda_has_bfloat16(device)
    return kind == 'cpu' and cpu_has_native_bfloat16()


def orthogonalization_dtype(device):
    """What Muon orthogonalises its updates in on this device: bfloat16 where it is native, else float32
    (torch.optim.Muon's bfloat16 everywhere made a step 8x slower on an AVX2-only CPU)."""
    return torch.bfloat16 if native_bfloat16(device) else torch.float32


def bfloat16_reason(device):
    """Why the device computes bfloat16 natively or not, in words, for the log."""
    kind = device.split(':')[0]
    if kind == 'cuda':
        name = torch.cuda.get_device_name(device)
        return f"this GPU ({name}) {'computes' if cuda_has_bfloat16(device) else 'emulates'} bfloat16"
    if kind != 'cpu':
        return f"{device} has no bfloat16 autocast here"
    if cpu_has_native_bfloat16():
        features = ' and '.join(cpu_bfloat16_features()) or "its BF16 extension"
        return f"this CPU ({cpu_name()}) computes bfloat16 natively, with {features}"
    if cpu_bfloat16_features():  # the instructions are there, and oneDNN was told not to use them
        return (f"this CPU ({cpu_name()}) has {' and '.join(cpu_bfloat16_features())}, but oneDNN is capped below "
                f"them (ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', '?')}), so torch emulates bfloat16")
    return (f"this CPU ({cpu_name()}) has no native bfloat16 (AVX-512-BF16 or AMX on x86, BF16 on Arm), "
            f"only torch's emulation")


def autocast(device, dtype):
    """Mixed-precision context for the forward pass; nothing for float32."""
    if dtype == 'float32':
        return nullcontext()
    return torch.autocast(device_type=device.split(':')[0], dtype=DTYPES[dtype])


SDPA_BACKENDS = ('auto', 'flash', 'cudnn', 'efficient', 'math')


def dropout_in_sixteenths(dropout):
    """Whether cuDNN's attention can apply this dropout rate: some of its kernels resolve the rate only
    in steps of 1/16 and round anything else (pytorch/pytorch#174245 keeps torch from routing such
    rates to cuDNN; torch 2.11 does not have it)."""
    return abs(dropout * 16 - round(dropout * 16)) < 1e-9


def select_sdpa_backend(name, device, dtype, dropout):
    """Which kernels torch's scaled_dot_product_attention may use on CUDA. 'flash', 'cudnn', 'efficient'
    or 'math' restrict it to that family, for measuring which is fastest; a family that cannot run this
    setting is refused in one line, not at the first forward. 'auto' leaves the choice to torch, except
    that cuDNN's kernels are left out where the dropout is not a multiple of 1/16 (torch 2.11 on Hopper
    would otherwise train with another rate than the one configured)."""
    if name not in SDPA_BACKENDS:
        raise ScriptError(f"unknown sdpa_backend {name!r}; use one of {', '.join(SDPA_BACKENDS)}")
    kind = device.split(':')[0]
    if kind != 'cuda' and name in ('cudnn', 'efficient'):
        raise ScriptError(f"sdpa_backend={name} is a CUDA kernel and this run is on {device}; use sdpa_backend=auto")
    if kind == 'cuda' and name in ('flash', 'cudnn'):
        if dtype == 'float32':
            raise ScriptError(f"sdpa_backend={name} runs only in bfloat16 or float16, and dtype is float32; use "
                              f"dtype=bfloat16 (or auto), or sdpa_backend=efficient, math or auto")
        if torch.cuda.get_device_capability(device) < (8, 0):
            raise ScriptError(f"sdpa_backend={name} needs compute capability 8.0 (Ampere) or later, and this GPU "
                              f"({torch.cuda.get_device_name(device)}) has not; use sdpa_backend=efficient or auto")
    if kind == 'cpu' and name == 'flash' and dropout > 0:
        raise ScriptError(f"sdpa_backend=flash has no kernel with dropout on the CPU (dropout={dropout}); use "
                          f"sdpa_backend=auto or math, or dropout=0")
    if name == 'cudnn' and not dropout_in_sixteenths(dropout):
        raise ScriptError(f"sdpa_backend=cudnn applies dropout only in steps of 1/16, so dropout={dropout} would "
                          f"become another rate or find no kernel; use a multiple of 0.0625 or another sdpa_backend")
    cudnn = getattr(torch.backends.cuda, 'enable_cudnn_sdp', None)  # torch>=2.3
    if name == 'auto':
        if kind == 'cuda' and cudnn is not None and not dropout_in_sixteenths(dropout):
            cudnn(False)
        return
    torch.backends.cuda.enable_flash_sdp(name == 'flash')
    torch.backends.cuda.enable_mem_efficient_sdp(name == 'efficient')
    torch.backends.cuda.enable_math_sdp(name == 'math')
    if cudnn is not None:
        cudnn(name == 'cudnn')


def synchronize(device):
    """Wait for the device's queued work, so a clock read afterwards measures it."""
    kind = device.split(':')[0]
    if kind == 'cuda':
        torch.cuda.synchronize(device)
    elif kind == 'mps':
        torch.mps.synchronize()


def cuda_graphs_accumulation_error(device, compile, compile_mode, micro_steps):
    """Why this setting cannot train, or None. Under CUDA graphs (torch.compile's reduce-overhead and
    max-autotune modes on a GPU) each backward replay writes its gradients over the last one's, so
    gradients cannot be accumulated over micro-steps (pytorch/pytorch#169545)."""
    if compile and compile_mode in ('reduce-overhead', 'max-autotune') and device.startswith('cuda') and micro_steps > 1:
        return (f"compile_mode={compile_mode} uses CUDA graphs, which cannot accumulate gradients over "
                f"{micro_steps} micro-steps per process (each backward replay overwrites the last one's); use "
                f"compile_mode=default or max-autotune-no-cudagraphs, or one micro-step per process")
    return None


def compile_model(model, device, mode=None):
    """torch.compile(model) where compilation works on this platform; otherwise one warning and the
    model as it is. A tiny function is compiled and run first, so a missing compiler shows up here
    rather than in the middle of the first training step."""
    try:
        probe = torch.compile(lambda x: x * 2 + 1)
        probe(torch.ones(4, device=device))
        return torch.compile(model, mode=mode)
    except Exception as e:  # any failure of the toolchain means: run uncompiled
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"warning: torch.compile is not available here ({type(e).__name__}: {message[:200]}); running uncompiled",
              file=sys.stderr)
        return model


# ----------------------------------------------------------------------------- memory, before allocating

def device_memory(device):
    """Bytes of memory the device has (a GPU's own, the machine's for cpu), or None where unknown."""
    kind = device.split(':')[0]
    try:
        if kind == 'cuda':
            return torch.cuda.get_device_properties(device).total_memory
        if kind == 'mps':
            return torch.mps.recommended_max_memory()
        return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
    except (AttributeError, ValueError, OSError, RuntimeError):
        return None


def training_memory(model_args, batch_size, block_size, dtype, train=True, shards=1):
    """A lower bound of the bytes a training step needs, from the model's shape alone: the float32
    weights (with train, also their gradients and AdamW's two moments: 16 bytes per parameter,
    divided among the shards of FSDP), the activations that backward keeps (at least 16 numbers per
    layer, position and channel: the block's inputs, q, k, v, the attention output, the MLP's
    4x-wide hidden layer before and after GELU) and the float32 logits. Returns (total, parameters)."""
    L, C, V = model_args['n_layer'], model_args['n_embd'], model_args['vocab_size']
    params = 12 * L * C * C + V * C + model_args['block_size'] * C  # the matmuls and the embeddings
    width = 4 if dtype == 'float32' else 2
    weights = params * (16 if train else 4) // shards
    activations = (16 * L * C * width if train else 0) * batch_size * block_size
    logits = 4 * batch_size * block_size * V * (2 if train else 1)
    return weights + activations + logits, params


def memory_error(device, model_args, batch_size, block_size, dtype, train=True, shards=1):
    """Why this model and batch cannot fit in the device's memory, or None (also where the device's
    memory or the model's shape is not known): checked before anything is allocated, so that a shape
    such as n_layer=10000 is one line rather than an allocation that fails, or swaps, for minutes."""
    if not all(isinstance(model_args.get(k), int) for k in ('n_layer', 'n_embd', 'vocab_size', 'block_size')):
        return None
    available = device_memory(device)
    need, params = training_memory(model_args, batch_size, block_size, dtype, train, shards)
    if available is None or need <= available:
        return None
    what = 'weights, gradients and AdamW state, activations' if train else 'weights and logits'
    return (f"this model and batch need at least {need / 2**30:,.1f} GiB ({params / 1e6:,.0f}M parameters: {what} for "
            f"batch_size={batch_size} x block_size={block_size}), more than the {available / 2**30:,.1f} GiB "
            f"{'of this machine' if device == 'cpu' else 'of ' + device}; use a smaller model (n_layer, n_embd), "
            f"batch_size or block_size")
