import os
import platform
import re
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from nanogpt.device import (cuda_graphs_accumulation_error, device_peak_flops, format_mfu, mfu, peak_flops, pick_device,
                     pick_dtype)

T = 1e12


@pytest.mark.parametrize('name,dtype,expected', [
    ('NVIDIA A100-SXM4-80GB', 'bfloat16', 312 * T),
    ('NVIDIA A100-SXM4-40GB', 'float32', 156 * T),
    ('NVIDIA A100-PCIE-40GB', 'float16', 312 * T),
    ('NVIDIA A100 80GB PCIe', 'bfloat16', 312 * T),
    ('NVIDIA H100 80GB HBM3', 'bfloat16', 989.4 * T),
    ('NVIDIA H100 80GB HBM3', 'float32', 494.7 * T),
    ('NVIDIA H100 PCIe', 'bfloat16', 756.5 * T),
    ('NVIDIA H100 NVL', 'bfloat16', 835.5 * T),
    ('NVIDIA H200', 'bfloat16', 989.4 * T),
    ('NVIDIA H200 NVL', 'bfloat16', 835.5 * T),
    ('NVIDIA H800', 'bfloat16', 989.4 * T),
    ('NVIDIA H800 PCIe', 'float16', 756.5 * T),
    ('NVIDIA H20', 'bfloat16', 148 * T),  # not H200's
    ('NVIDIA B200', 'bfloat16', 2250 * T),
    ('NVIDIA GB200', 'bfloat16', 2500 * T),  # not B200's
    ('NVIDIA L4', 'bfloat16', 121 * T),
    ('NVIDIA L40', 'bfloat16', 181.05 * T),
    ('NVIDIA L40S', 'bfloat16', 366 * T),  # not L4's or L40's
    ('NVIDIA A10', 'bfloat16', 125 * T),
    ('NVIDIA A10G', 'bfloat16', 70 * T),  # not A10's, and A100 not A10's
    ('NVIDIA A30', 'float32', 82 * T),
    ('NVIDIA A40', 'bfloat16', 149.7 * T),
    ('NVIDIA RTX A6000', 'bfloat16', 154.8 * T),
    ('Tesla V100-SXM2-16GB', 'float16', 125 * T),
    ('Tesla V100-PCIE-32GB', 'float16', 112 * T),
    ('Tesla V100-SXM2-16GB', 'bfloat16', None),
    ('Tesla V100-SXM2-16GB', 'float32', None),
    ('Tesla T4', 'float16', 65 * T),
    ('Tesla T4', 'bfloat16', None),
    ('NVIDIA GeForce RTX 3060', 'bfloat16', 25.5 * T),
    ('NVIDIA GeForce RTX 3090', 'bfloat16', 71 * T),
    ('NVIDIA GeForce RTX 4090', 'bfloat16', 165.2 * T),
    ('NVIDIA GeForce RTX 5090', 'bfloat16', 209.5 * T),
    ('NVIDIA GH200 480GB', 'bfloat16', 989.4 * T),  # not H200's pattern, though the same rate
    ('NVIDIA GH200 144G HBM3e', 'float32', 494.7 * T),
    ('NVIDIA A800-SXM4-80GB', 'bfloat16', 312 * T),
    ('NVIDIA A800 80GB PCIe', 'float32', 156 * T),
    ('NVIDIA RTX 6000 Ada Generation', 'bfloat16', 364.2 * T),
    ('NVIDIA RTX 6000 Ada Generation', 'float32', 182.1 * T),
    ('Quadro RTX 6000', 'float16', None),  # Turing: another card
    ('NVIDIA GeForce RTX 3090 Ti', 'bfloat16', 80 * T),  # not the RTX 3090's 71
    ('NVIDIA GeForce RTX 3090 Ti', 'float32', 40 * T),
    ('NVIDIA B300 SXM6 AC', 'bfloat16', 2250 * T),
    ('NVIDIA B300 SXM6 AC', 'float32', 1125 * T),
    ('NVIDIA GeForce RTX 3060 Ti', 'bfloat16', None),  # another card: unknown rather than wrong
    ('NVIDIA GeForce RTX 4090 Laptop GPU', 'bfloat16', None),
    ('Some Future Accelerator 9000', 'bfloat16', None),
])
def test_peak_flops_table(name, dtype, expected):
    assert peak_flops(name, dtype) == expected


def test_every_listed_gpu_has_a_16_bit_rate():
    names = ['NVIDIA A100-SXM4-80GB', 'NVIDIA H100 80GB HBM3', 'NVIDIA H100 PCIe', 'NVIDIA H100 NVL', 'NVIDIA H200',
             'NVIDIA H800', 'NVIDIA H20', 'NVIDIA B200', 'NVIDIA GB200', 'NVIDIA L4', 'NVIDIA L40', 'NVIDIA L40S',
             'NVIDIA A10', 'NVIDIA A10G', 'NVIDIA A30', 'NVIDIA A40', 'NVIDIA RTX A6000', 'Tesla V100-SXM2-32GB',
             'Tesla T4', 'NVIDIA GeForce RTX 3060', 'NVIDIA GeForce RTX 3090', 'NVIDIA GeForce RTX 4090',
             'NVIDIA GeForce RTX 5090', 'NVIDIA GH200 480GB', 'NVIDIA A800-SXM4-80GB', 'NVIDIA RTX 6000 Ada Generation',
             'NVIDIA GeForce RTX 3090 Ti', 'NVIDIA B300 SXM6 AC']
    assert all(peak_flops(n, 'float16') for n in names)


def test_peak_flops_override_and_cpu():
    assert device_peak_flops('cpu', 'float32', 0.0) is None
    assert device_peak_flops('cpu', 'float32', 1.5e11) == 1.5e11


def test_mfu_hand_computed():
    # GPT-2 124M without biases: 12 layers x 7,079,424 + wte 50304 x 768 (tied with lm_head) + ln_f 768
    n = 12 * (768 * 2304 + 768 * 768 + 2 * 768 * 3072 + 2 * 768) + 50304 * 768 + 768
    assert n == 123_587_328
    flops_per_token = 6 * n + 12 * 12 * 12 * 64 * 1024  # L=12, H=12, Q=64, T=1024
    assert flops_per_token == 854_770_176
    # upstream's H200 figure: batch 12 x 1024 tokens in 26.2 ms against 989 TFLOP/s is 40.5%
    value = mfu(flops_per_token, 12 * 1024, 0.0262, 989e12)
    assert value == pytest.approx(854_770_176 * 12288 / 0.0262 / 989e12)
    assert round(value * 100, 1) == 40.5
    assert format_mfu(value) == '40.54%' and format_mfu(None) == 'n/a'


def test_model_flops_method_agrees_with_the_hand_count():
    import torch
    from model import GPT, GPTConfig
    with torch.device('meta'):
        model = GPT(GPTConfig(bias=False))
    assert model.get_num_params() == 123_587_328
    assert model.flops_per_token(1024) == 854_770_176


def test_device_and_dtype_choices_on_this_machine():
    import torch
    if not torch.cuda.is_available():
        assert pick_device('auto') in ('cpu', 'mps')
        with pytest.raises(SystemExit, match='sees no CUDA GPU'):
            pick_device('cuda')
    assert pick_dtype('cpu', 'auto') == 'float32'
    with pytest.raises(SystemExit, match='unknown device'):
        pick_device('tpu')
    with pytest.raises(SystemExit, match='unknown dtype'):
        pick_dtype('cpu', 'float8')
    with pytest.raises(SystemExit, match='float16 training needs a GPU'):
        pick_dtype('cpu', 'float16')


@pytest.mark.parametrize('device,compile,mode,micro_steps,refused', [
    ('cuda', True, 'reduce-overhead', 4, True),
    ('cuda:1', True, 'max-autotune', 2, True),
    ('cuda', True, 'reduce-overhead', 1, False),  # one micro-step: the optimizer reads the gradients first
    ('cuda', True, 'default', 4, False),
    ('cuda', True, 'max-autotune-no-cudagraphs', 4, False),
    ('cuda', False, 'reduce-overhead', 4, False),  # not compiled: no CUDA graphs
    ('cpu', True, 'reduce-overhead', 4, False),  # inductor makes no CUDA graphs on a CPU
])
def test_cuda_graphs_refuse_gradient_accumulation(device, compile, mode, micro_steps, refused):
    error = cuda_graphs_accumulation_error(device, compile, mode, micro_steps)
    assert (error is not None) == refused
    if refused:
        assert f'compile_mode={mode}' in error and f'{micro_steps} micro-steps' in error and '\n' not in error


def test_cpu_bfloat16_warns_only_where_torch_emulates_it(monkeypatch, capsys):
    from nanogpt import device
    for native, warned in ((True, False), (False, True)):
        monkeypatch.setattr(device, 'cpu_has_native_bfloat16', lambda: native)
        assert pick_dtype('cpu', 'bfloat16') == 'bfloat16'
        assert ('likely several times slower than float32' in capsys.readouterr().err) == warned


def test_fast_dtype_is_bfloat16_only_where_the_cpu_has_it_natively(monkeypatch, capsys):
    from nanogpt import device
    for native, picked in ((True, 'bfloat16'), (False, 'float32')):
        monkeypatch.setattr(device, 'cpu_has_native_bfloat16', lambda: native)
        assert pick_dtype('cpu', 'fast') == picked
        assert device.orthogonalization_dtype('cpu') == getattr(torch, picked)  # Muon's Newton-Schulz too
        out = capsys.readouterr().out
        assert out.startswith(f"dtype: {picked} (dtype='fast': this CPU (") and out.count('\n') == 1
        assert ('computes bfloat16 natively' in out) == native
    assert pick_dtype('cpu', 'auto') == 'float32'  # auto stays upstream's choice on a CPU


@pytest.mark.skipif(platform.machine().lower() not in ('x86_64', 'amd64'), reason="oneDNN's ISA cap is x86's")
def test_fast_dtype_is_float32_on_a_cpu_without_native_bfloat16():
    # oneDNN capped at AVX2 is the CPU of most laptops: whatever this machine has, bfloat16 is emulated there
    code = "from nanogpt.device import pick_dtype, orthogonalization_dtype; print(pick_dtype('cpu', 'fast'), orthogonalization_dtype('cpu'))"
    out = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True, check=True,
                         env=dict(os.environ, ONEDNN_MAX_CPU_ISA='AVX2')).stdout
    assert out.splitlines()[-1] == 'float32 torch.float32' and "dtype='fast'" in out


def test_keep_freed_host_memory_serves_blocks_from_the_heap_and_keeps_them_when_freed():
    """What keep_freed_host_memory sets, read back from glibc's own accounting (mallinfo2) in a fresh
    process: a 4 MiB tensor (a step's buffers are 0.1-2 MiB on the CPU config) comes from the heap rather
    than from a mapping of its own (which glibc would unmap when it is freed, for the next step to fault
    in again), and once freed it stays in the heap. Counts of what the allocator did, not of page
    faults, which depend on the machine's load."""
    script = '''
import ctypes, sys, torch
from nanogpt.device import keep_freed_host_memory
torch.set_num_threads(1)  # every allocation in this thread's arena, the main one
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ('arena', 'ordblks', 'smblks', 'hblks', 'hblkhd', 'usmblks',
                                                     'fsmblks', 'uordblks', 'fordblks', 'keepcost')]
try:
    mallinfo2 = ctypes.CDLL(None).mallinfo2
except AttributeError:
    print('none'); sys.exit()
mallinfo2.restype = MallInfo2
kept = keep_freed_host_memory() if sys.argv[1] == 'keep' else None
before = mallinfo2()
x = torch.empty(4 << 20, dtype=torch.uint8)
during = mallinfo2()
del x
after = mallinfo2()
print(kept, during.hblks - before.hblks, after.fordblks - before.fordblks)
'''
    counts = {}
    for mode in ('default', 'keep'):
        out = subprocess.run([sys.executable, '-c', script, mode], capture_output=True, text=True, check=True,
                             cwd=str(REPO), env=dict(os.environ, OMP_NUM_THREADS='1')).stdout.split()
        if out[0] == 'none' or out[0] == 'False':
            pytest.skip("no glibc mallinfo2/mallopt here (glibc 2.33 or later)")
        counts[mode] = (int(out[1]), int(out[2]))
    assert counts['default'][0] == 1  # glibc's default: a mapping of its own, given back when freed
    # from the heap, and kept there once freed (the heap grew by most of it: it had some room at its top)
    assert counts['keep'][0] == 0 and counts['keep'][1] > 3 << 20, counts


# GPUs as torch describes them: name, compute capability, and whether torch.cuda.is_bf16_supported()
# says yes with emulation counted (its default) and without
GPUS = {
    'V100': ('Tesla V100-SXM2-16GB', (7, 0), {True: True, False: False}),
    'T4': ('Tesla T4', (7, 5), {True: True, False: False}),
    'A100': ('NVIDIA A100-SXM4-80GB', (8, 0), {True: True, False: True}),
    'H100': ('NVIDIA H100 80GB HBM3', (9, 0), {True: True, False: True}),
    'Pascal': ('Tesla P100-PCIE-16GB', (6, 0), {True: False, False: False}),  # not even emulated
}


@pytest.fixture
def gpu(monkeypatch):
    """Makes torch's capability queries describe one of GPUS, as on a machine that has it."""
    import torch

    def use(key):
        name, capability, bf16 = GPUS[key]
        monkeypatch.setattr(torch.cuda, 'get_device_name', lambda device=None: name)
        monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda including_emulation=True: bf16[including_emulation])
    return use


@pytest.mark.parametrize('key,expected', [('V100', 'float16'), ('T4', 'float16'), ('A100', 'bfloat16'), ('H100', 'bfloat16')])
def test_auto_dtype_is_bfloat16_only_where_the_gpu_has_it_natively(gpu, key, expected):
    gpu(key)
    assert pick_dtype('cuda', 'auto') == expected and pick_dtype('cuda:1', 'auto') == expected


def test_explicit_bfloat16_on_an_older_gpu_warns_or_is_refused(gpu, capsys):
    gpu('V100')
    assert pick_dtype('cuda', 'bfloat16') == 'bfloat16'
    assert 'only emulates bfloat16' in capsys.readouterr().err
    gpu('A100')
    assert pick_dtype('cuda', 'bfloat16') == 'bfloat16' and capsys.readouterr().err == ''
    gpu('Pascal')
    with pytest.raises(SystemExit, match='has no bfloat16; use dtype=float16'):
        pick_dtype('cuda', 'bfloat16')


@pytest.fixture
def sdpa_flags():
    """The attention kernels torch may use, as select_sdpa_backend leaves them; restored afterwards."""
    import torch
    names = ('flash', 'mem_efficient', 'math', 'cudnn')
    saved = {n: getattr(torch.backends.cuda, f'{n}_sdp_enabled')() for n in names}
    yield lambda: {n for n in names if getattr(torch.backends.cuda, f'{n}_sdp_enabled')()}
    for n, enabled in saved.items():
        getattr(torch.backends.cuda, f'enable_{n}_sdp')(enabled)


ALL_SDPA = {'flash', 'mem_efficient', 'math', 'cudnn'}


@pytest.mark.parametrize('args,enabled', [
    (('auto', 'cuda', 'bfloat16', 0.0), ALL_SDPA),
    (('auto', 'cuda', 'bfloat16', 0.25), ALL_SDPA),  # a multiple of 1/16: cuDNN applies it exactly
    (('auto', 'cuda', 'bfloat16', 0.2), ALL_SDPA - {'cudnn'}),  # it would not: cuDNN left out
    (('auto', 'cpu', 'float32', 0.2), ALL_SDPA),
    (('flash', 'cuda', 'bfloat16', 0.2), {'flash'}),
    (('cudnn', 'cuda', 'float16', 0.125), {'cudnn'}),
    (('efficient', 'cuda', 'float32', 0.2), {'mem_efficient'}),
    (('math', 'cpu', 'float32', 0.0), {'math'}),
])
def test_sdpa_backend_choices(gpu, sdpa_flags, args, enabled):
    from nanogpt.device import select_sdpa_backend
    gpu('H100')
    select_sdpa_backend(*args)
    assert sdpa_flags() == enabled


@pytest.mark.parametrize('key,args,words', [
    ('H100', ('flash', 'cuda', 'float32', 0.0), 'sdpa_backend=flash runs only in bfloat16 or float16, and dtype is float32'),
    ('H100', ('cudnn', 'cuda:1', 'float32', 0.0), 'sdpa_backend=cudnn runs only in bfloat16 or float16'),
    ('T4', ('flash', 'cuda', 'float16', 0.0), 'needs compute capability 8.0 (Ampere) or later, and this GPU (Tesla T4)'),
    ('H100', ('cudnn', 'cuda', 'bfloat16', 0.2), 'dropout=0.2 would become another rate'),
    ('H100', ('cudnn', 'cpu', 'float32', 0.0), 'sdpa_backend=cudnn is a CUDA kernel and this run is on cpu'),
    ('H100', ('efficient', 'cpu', 'float32', 0.0), 'sdpa_backend=efficient is a CUDA kernel'),
    ('H100', ('fast', 'cuda', 'bfloat16', 0.0), "unknown sdpa_backend 'fast'"),
])
def test_sdpa_backends_that_cannot_run_are_refused_in_one_line(gpu, sdpa_flags, key, args, words):
    from nanogpt.device import select_sdpa_backend
    gpu(key)
    with pytest.raises(SystemExit, match=re.escape(words)):
        select_sdpa_backend(*args)
    assert sdpa_flags() == ALL_SDPA  # refused before anything changed
