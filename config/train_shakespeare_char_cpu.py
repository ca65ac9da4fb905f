# the character-level shakespeare model, small enough for a laptop or a CPU-only machine:
# upstream nanoGPT's suggested CPU settings (a smaller, shorter version of train_shakespeare_char.py)

out_dir = 'out-shakespeare-char'
eval_interval = 250
eval_iters = 20
log_interval = 1
always_save_checkpoint = False  # only save when val improves

wandb_log = False
wandb_project = 'shakespeare-char'
wandb_run_name = 'mini-gpt-cpu'

dataset = 'shakespeare_char'
gradient_accumulation_steps = 1
batch_size = 12
block_size = 64  # context of up to 64 previous characters

n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0

learning_rate = 1e-3
max_iters = 2000
lr_decay_iters = 2000
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 100

device = 'cpu'
compile = False  # compiling takes longer on a CPU than it saves in a run this short
# dtype = 'bfloat16'  # opt-in: 1.4x faster per iteration on a 2-core Zen 4, on CPUs with bfloat16
#                     # instructions (AVX512-BF16, AMX); other rounding, the same losses within noise
