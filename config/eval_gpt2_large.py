# evaluates the pretrained GPT-2 large (774M parameters: n_layer=36, n_head=20, n_embd=1280) on OpenWebText
# and exits; needs data/openwebtext prepared
# $ python train.py config/eval_gpt2_large.py
batch_size = 8
eval_iters = 500  # many batches, for a close estimate of the loss
eval_only = True
wandb_log = False
init_from = 'gpt2-large'
