# The modern recipe on a CPU: character-level tiny Shakespeare to upstream's CPU result (its README's
# 2000-iteration run: 1.898 on the whole val split) in as little wall time as it takes, on CPUs with
# native bfloat16 (AVX-512-BF16, AMX) and without (float32 there, as dtype='fast' decides). The same model
# shape as train_shakespeare_char_cpu.py; what changes is the recipe. docs/recipes.md has the
# measurements, and what each technique is worth (an ablation).
# $ python train.py config/speedrun_shakespeare_char_cpu.py && python benchmarks/evaluate.py --out_dir=out-speedrun-shakespeare-char-cpu

out_dir = 'out-speedrun-shakespeare-char-cpu'
eval_interval = 250  # one evaluation, at the end: they cost time too
eval_at_start = False
eval_iters = 20
log_interval = 10
always_save_checkpoint = True  # keep the final model

wandb_log = False
wandb_project = 'shakespeare-char'
wandb_run_name = 'speedrun-cpu'

dataset = 'shakespeare_char'
gradient_accumulation_steps = 1
batch_size = 12
block_size = 64

n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0

# the techniques that pay for themselves here (logit_softcap, measured, does not: it stays at 0, off)
rope = True
qk_norm = True
mlp_activation = 'relu2'
tie_weights = False
zero_init_proj = True
optimizer = 'muon'
muon_learning_rate = 0.01  # Muon for the blocks' matrices
muon_momentum = 0.9  # below Muon's usual 0.95: a run this short gains from a momentum that forgets sooner
learning_rate = 1e-2  # AdamW for the embedding, the head and the norms
beta2 = 0.99

# 250 iterations: 20 of warmup, constant to 125, then a straight line down to 0
max_iters = 250
lr_decay_iters = 250
warmup_iters = 20
cooldown_iters = 125
min_lr = 0.0

device = 'cpu'
dtype = 'fast'  # bfloat16 where the CPU computes it natively (1.7x faster than float32 on a Zen 4), else float32
compile = False  # compiling takes longer on a CPU than it saves in a run this short
