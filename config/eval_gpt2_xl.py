# evaluates the pretrained GPT-2 XL (1558M parameters: n_layer=48, n_head=25, n_embd=1600) on OpenWebText
# and exits; needs data/openwebtext prepared
# $ python train.py config/eval_gpt2_xl.py
batch_size = 8
eval_iters = 500  # many batches, for a close estimate of the loss
eval_only = True
wandb_log = False
init_from = 'gpt2-xl'
