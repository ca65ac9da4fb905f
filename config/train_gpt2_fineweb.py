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
# On GPUs with 40GB or less: batch_size = 16, gradient_accumulation_steps = 32 and eval_iters = 80, the same
# tokens and the same validation rows.
batch_size = 32
gradient_accumulation_steps = 16

# 19,073 iterations of 524,288 tokens: 10.0B tokens, one pass over sample-10BT read in order, as build-nanogpt,
# llm.c and modded-nanogpt read it (each process its own consecutive rows), not upstream's random windows
# (where the training split is shorter, the log says where a second pass begins). GPT-3's schedule for its
# 125M model: 6e-4 after a warmup of 375M tokens (715 iterations), a cosine down to a tenth at the end.
max_iters = 19073
lr_decay_iters = 19073
data_order = 'sequential'
warmup_iters = 715
learning_rate = 6e-4
min_lr = 6e-5
weight_decay = 0.1
beta2 = 0.95
grad_clip = 1.0

# evaluation: the val loss over the same 40 x 32 rows every time, the first 1,310,720 tokens of val_000.bin
# (build-nanogpt's 20 x 64 rows of its validation shard on one GPU); the train loss over 40 random batches;
# HellaSwag's 10,042 examples; every 250 iterations
eval_interval = 250
eval_iters = 40
fixed_val_set = True
hellaswag_interval = 250
log_interval = 10
