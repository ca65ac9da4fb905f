# GPT-2 (124M) trained on 10B tokens of FineWeb-Edu (sample-10BT), the reproduction of build-nanogpt and
# llm.c, with HellaSwag scored along the way; about 45 minutes on 8 H100s at 40% MFU (an estimate),
# see README.md "Reproducing GPT-2 (124M)":
# $ python data/fineweb_edu/prepare.py && python data/hellaswag/prepare.py
# $ torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2_fineweb.py

out_dir = 'out-gpt2-fineweb'
dataset = 'fineweb_edu'
wandb_log = False  # set True to follow the run in Weights & Biases
wandb_project = 'fineweb'
wandb_run_name = 'gpt2-124M'

# GPT-2 124M: 12 layers, 12 heads, 768 wide, 1024 tokens of context, biases as GPT-2 has them
n_layer = 12
n_head = 12
n_embd = 768
block_size = 1024
bias = True
dropout = 0.0

# tokens per iteration: 32 sequences * 1024 tokens * 16 micro-steps = 524,288 (2**19, about 0.5M), the
# micro-steps shared out among the processes (2 on each of 8 GPUs; 16 divides among 1, 2, 4, 8 or 16).
# On GPUs with 40GB or less: batch_size = 16 and gradient_accumulation_steps = 32, the same tokens.
batch_size = 32
gradient_accumulation_steps = 16

# 19,073 iterations of 524,288 tokens: 10.0B tokens, one pass over sample-10BT. GPT-3's schedule for its
# 125M model: 6e-4 after a warmup of 375M tokens (715 iterations), a cosine down to a tenth at the end.
max_iters = 19073
lr_decay_iters = 19073
warmup_iters = 715
learning_rate = 6e-4
min_lr = 6e-5
weight_decay = 0.1
beta2 = 0.95
grad_clip = 1.0

# evaluation: 40 batches of each split (1.3M tokens) and HellaSwag's 10,042 examples every 250 iterations
eval_interval = 250
eval_iters = 40
hellaswag_interval = 250
log_interval = 10
