"""
Samples text from a trained model (out_dir/ckpt.pt) or from GPT-2's weights.
$ python sample.py --out_dir=out-shakespeare-char
$ python sample.py --init_from=gpt2-xl --start="What is the answer to life?" --num_samples=1
"""

import codecs
import sys
import time

from nanogpt import ScriptError, exit_on_ctrl_c

exit_on_ctrl_c()  # Ctrl-C, while starting or sampling: one line, exit code 130

import torch  # noqa: E402

from configurator import configure  # noqa: E402
from nanogpt.checkpoint import init_model  # noqa: E402
from nanogpt.data import load_tokenizer, model_tokenizer, token_bytes  # noqa: E402
from nanogpt.device import autocast, compile_model, pick_device, pick_dtype  # noqa: E402

MAX_PROMPT_BYTES = 16 << 20  # a prompt file larger than this is not a prompt (FILE:/dev/zero never ends)

# -----------------------------------------------------------------------------
init_from = 'resume'  # 'resume' (from out_dir), a GPT-2 name ('gpt2', 'gpt2-xl', ...) or a Hugging Face GPT-2 directory
out_dir = 'out'  # ignored unless init_from is 'resume'
start = "\n"  # the prompt: text, or FILE:path to read it from a UTF-8 file
num_samples = 10  # number of samples to draw
max_new_tokens = 500  # number of tokens generated in each sample
temperature = 0.8  # 1.0 = no change, < 1.0 = less random, > 1.0 = more random, 0 = always the likeliest token
top_k = 200  # keep only the top_k most likely tokens (a top_k of at least the vocabulary size keeps all)
top_p = 1.0  # keep the smallest set of tokens whose probability reaches top_p (1.0: all)
kv_cache = True  # keep attention keys and values between steps, so each new token costs one position
seed = 1337
device = 'auto'  # 'auto', 'cpu', 'cuda', 'cuda:0', 'mps'
dtype = 'auto'  # 'auto', 'fast' (bfloat16 also on a CPU that has it natively), 'float32', 'bfloat16' or 'float16'
compile = False  # torch.compile the model (slow to start, faster for long generations)
# -----------------------------------------------------------------------------
configure(globals(), positive_ints=('num_samples',))  # also checks temperature, top_k, top_p, max_new_tokens, seed
device = pick_device(device)
dtype = pick_dtype(device, dtype)
torch.manual_seed(seed)
torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True

# model, and the tokenizer it was trained with: its dataset's meta.pkl, else GPT-2's BPE; they must agree
model, checkpoint = init_model(init_from, out_dir, dropout=0.0)
meta, data_dir, where = model_tokenizer(checkpoint, model.config.vocab_size, f"GPT-2's tokenizer, the one sample.py "
                                        f"has for init_from={init_from}", "sample from its checkpoint instead (--out_dir)")
checkpoint = None
model.eval()
model.to(device)
if compile:
    model.forward = compile_model(model.forward, device)  # generate() calls forward
encode, decode_bytes = load_tokenizer(meta, where, data_dir)
n_tokens = len(token_bytes(meta, where, data_dir)[0])  # a padded vocabulary's extra ids are no tokens: never drawn

if start.startswith('FILE:'):
    try:
        with open(start[5:], 'rb') as f:
            prompt = f.read(MAX_PROMPT_BYTES + 1)
        if len(prompt) > MAX_PROMPT_BYTES:
            raise ScriptError(f"the prompt file {start[5:]} is longer than {MAX_PROMPT_BYTES >> 20} MiB; give a "
                              f"shorter prompt (the model reads only its last block_size tokens)")
        start = prompt.decode('utf-8')
    except (OSError, UnicodeDecodeError) as e:
        raise ScriptError(f"cannot read the prompt file {start[5:]}: {e}")
start_ids = encode(start)
if not start_ids:
    raise ScriptError("the prompt is empty; give some text with --start=...")
x = torch.tensor(start_ids, dtype=torch.long, device=device)[None, ...]

# generate; a single sample is printed as it is generated
generated, t0 = 0, time.time()
with torch.no_grad(), autocast(device, dtype):
    for k in range(num_samples):
        tokens = model.generate_tokens(x, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                       kv_cache=kv_cache, n_tokens=n_tokens)
        try:
            if num_samples == 1:
                text = codecs.getincrementaldecoder('utf-8')(errors='replace')  # BPE tokens can split a character
                sys.stdout.write(text.decode(decode_bytes(start_ids)))
                for token in tokens:
                    sys.stdout.write(text.decode(decode_bytes(token[0].tolist())))
                    sys.stdout.flush()
                    generated += 1
                print(text.decode(b'', final=True))
            else:
                new = [token[0].item() for token in tokens]
                generated += len(new)
                print(decode_bytes(start_ids + new).decode('utf-8', errors='replace'))
        finally:  # closed now: left to the interpreter's exit (after Ctrl-C), it would complain as torch goes
            tokens.close()
        print('---------------')
seconds = time.time() - t0
print(f"generated {generated} tokens in {seconds:.2f}s ({generated / max(seconds, 1e-9):.1f} tokens/s)", file=sys.stderr)
