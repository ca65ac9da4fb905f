"""HellaSwag in completion style: our scores of a tiny random GPT-2 against a scorer built here on
transformers' GPT2LMHeadModel over the same weights; benchmarks/evaluate.py --hellaswag=True; bad files."""

import json

import numpy as np
import pytest
import torch

from model import GPT
from nanogpt import evaluation
from test_gpt2 import GPT2_VOCAB, SIZE, random_gpt2, run_in_process, write_hf_dir
from test_prepare import gpt2_from_file

# a few examples in HellaSwag's format, endings of different lengths so that the mean and the sum can disagree
EXAMPLES = [
    {'ctx': "A man is sitting on a roof. he", 'label': 3,
     'endings': ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.", "is holding a rubik's cube.",
                 "starts pulling up roofing on a roof."]},
    {'ctx': "A woman pours water into a pot. She", 'label': 0,
     'endings': ["puts the pot on the stove.", "sings", "throws the pot out of the window and into the garden below.",
                 "is a pot."]},
    {'ctx': "The dog runs across the field and", 'label': 2,
     'endings': ["flies.", "sleeps on the moon with its friends.", "catches the ball.", "reads a newspaper"]},
    {'ctx': "Two kids build a sandcastle at the beach. Then they", 'label': 1,
     'endings': ["eat it.", "add a moat around the castle walls.", "go to the office.", "paint the sky green"]},
    {'ctx': "Chef slices the onions thinly,", 'label': '2',  # the hub's copy writes labels as strings
     'endings': ["and cries.", "then drives away in a truck full of onions.", "and puts them in the pan.", "ok"]},
    {'ctx': "He tightens the last bolt on the bicycle wheel. He", 'label': 0,
     'endings': ["spins the wheel to check it.", "eats the bolt", "is a bicycle.", "calls the wheel on the phone."]},
    {'ctx': "In the video, a girl ties her shoes and", 'label': 3,
     'endings': ["swims", "flies to Paris for the day.", "becomes a shoe.", "starts running down the track."]},
]


@pytest.fixture(scope='module')
def tiny_gpt2(tmp_path_factory):
    """A tiny random GPT-2 in Hugging Face's layout, and a HellaSwag file of EXAMPLES."""
    base = tmp_path_factory.mktemp('hellaswag')
    folder = write_hf_dir(base / 'tiny-gpt2', random_gpt2(**SIZE, vocab_size=GPT2_VOCAB, seed=3), **SIZE,
                          vocab_size=GPT2_VOCAB)
    path = base / 'hellaswag_val.jsonl'
    path.write_text(''.join(json.dumps(e) + '\n' for e in EXAMPLES), encoding='utf-8')
    return folder, path


def transformers_scores(folder, bpe):
    """The reference: for each example and ending, context + ' ' + ending through GPT2LMHeadModel alone
    (no padding, no batching), and the ending tokens' losses summed and averaged."""
    transformers = pytest.importorskip('transformers')
    model = transformers.GPT2LMHeadModel.from_pretrained(str(folder)).eval()
    enc = gpt2_from_file(bpe)
    sums, means = [], []
    for example in EXAMPLES:
        ctx = enc.encode_ordinary(example['ctx'])
        row_sums, row_means = [], []
        for ending in example['endings']:
            end = enc.encode_ordinary(' ' + ending)
            tokens = torch.tensor([ctx + end])
            with torch.no_grad():
                logprobs = model(tokens).logits[0].double().log_softmax(-1)
            losses = [-logprobs[len(ctx) + j - 1, t].item() for j, t in enumerate(end)]
            row_sums.append(sum(losses))
            row_means.append(sum(losses) / len(losses))
        sums.append(row_sums)
        means.append(row_means)
    return np.array(sums), np.array(means)


def test_scores_agree_with_transformers(tiny_gpt2, gpt2_bpe, monkeypatch):
    folder, path = tiny_gpt2
    monkeypatch.setenv('NANOGPT_GPT2_BPE', str(gpt2_bpe))
    model = GPT.from_pretrained(str(folder)).eval()
    encoded = evaluation.hellaswag_for_model(str(path), model.config.vocab_size, model.config.block_size)
    sums, means = evaluation.hellaswag_losses(model, encoded, 'cpu', torch.no_grad(), batch_examples=3)  # padded batches
    ref_sums, ref_means = transformers_scores(folder, gpt2_bpe)
    np.testing.assert_allclose(sums, ref_sums, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(means, ref_means, rtol=1e-5, atol=1e-5)
    assert np.array_equal(means.argmin(1), ref_means.argmin(1)) and np.array_equal(sums.argmin(1), ref_sums.argmin(1))
    assert len(set(ref_means.argmin(1))) > 1  # the predictions vary, so agreeing on them means something
    assert not np.array_equal(ref_means.argmin(1), ref_sums.argmin(1))  # ... and acc differs from acc_norm

    labels = np.array([int(e['label']) for e in EXAMPLES])
    result = evaluation.hellaswag_accuracy(model, encoded, 'cpu', torch.no_grad(), batch_examples=2)
    assert result['examples'] == len(EXAMPLES)
    assert result['right_norm'] == int((ref_means.argmin(1) == labels).sum())
    assert result['right'] == int((ref_sums.argmin(1) == labels).sum())
    assert result['acc_norm'] == result['right_norm'] / len(EXAMPLES)


def test_evaluate_script(tiny_gpt2, monkeypatch, capsys, gpt2_bpe, tmp_path):
    folder, path = tiny_gpt2
    monkeypatch.setenv('NANOGPT_GPT2_BPE', str(gpt2_bpe))
    model = GPT.from_pretrained(str(folder)).eval()
    encoded = evaluation.hellaswag_for_model(str(path), model.config.vocab_size, model.config.block_size)
    expected = evaluation.hellaswag_accuracy(model, encoded, 'cpu', torch.no_grad())
    capsys.readouterr()
    assert run_in_process(monkeypatch, 'benchmarks/evaluate.py', '--hellaswag=True', f'--init_from={folder}',
                          f'--hellaswag_path={path}', '--device=cpu', '--batch_size=12') is None
    last = capsys.readouterr().out.strip().splitlines()[-1]
    n = len(EXAMPLES)
    assert last.startswith(f"hellaswag: acc_norm {expected['acc_norm']:.4f} ({expected['right_norm']}/{n}), "
                           f"acc {expected['acc']:.4f} ({expected['right']}/{n}), ")

    # bad files: one line each, before any model is loaded
    wrong = tmp_path / 'wrong.jsonl'
    wrong.write_text(json.dumps(EXAMPLES[0]) + '\n' + json.dumps(dict(EXAMPLES[1], endings=['a', 'b'])) + '\n')
    not_json = tmp_path / 'not_json.jsonl'
    not_json.write_text('ctx,endings,label\n"a",...\n')
    bad_label = tmp_path / 'bad_label.jsonl'
    bad_label.write_text(json.dumps(dict(EXAMPLES[0], label=4)) + '\n')
    cases = [(wrong, f"{wrong} line 2 is not a HellaSwag example: it needs ctx (a string), endings (4 strings) "
                     f"and label (0 to 3)"),
             (not_json, f"{not_json} line 1 is not JSON"),
             (bad_label, f"{bad_label} line 1 is not a HellaSwag example"),
             (tmp_path / 'missing.jsonl', f"{tmp_path / 'missing.jsonl'} does not exist; point hellaswag_path at "
                                          f"HellaSwag's validation file")]
    for bad, expected_line in cases:
        e = run_in_process(monkeypatch, 'benchmarks/evaluate.py', '--hellaswag=True', '--init_from=no-such-model',
                           f'--hellaswag_path={bad}', '--device=cpu')
        assert e.code.startswith('error: ' + expected_line) and '\n' not in e.code, e.code


def test_char_model_is_refused(tmp_path, monkeypatch, tiny_gpt2):
    from test_gpt2 import trained_checkpoint
    _, path = tiny_gpt2
    trained_checkpoint(tmp_path / 'out' / 'ckpt.pt', bias=False, vocab_size=65, compiled_names=False)
    e = run_in_process(monkeypatch, 'benchmarks/evaluate.py', '--hellaswag=True', f'--out_dir={tmp_path / "out"}',
                       f'--hellaswag_path={path}', '--device=cpu')
    assert e.code == "error: HellaSwag is scored in GPT-2's tokens; this model's vocabulary has 65 (a character-level model?)"


def test_long_rows_keep_their_ending(gpt2_bpe, monkeypatch):
    monkeypatch.setenv('NANOGPT_GPT2_BPE', str(gpt2_bpe))
    examples = [("word " * 50, ["one two three"] * 4, 0)]
    (rows, starts, label), = evaluation.encode_hellaswag(examples, gpt2_from_file(gpt2_bpe).encode_ordinary, 16)
    enc = gpt2_from_file(gpt2_bpe)
    ending = enc.encode_ordinary(' one two three')
    assert all(len(r) == 17 and r[s:] == ending for r, s in zip(rows, starts))  # block_size + 1, the context cut


def test_download_checks_the_file_and_writes_it_whole(tmp_path, monkeypatch):
    """evaluation.download_hellaswag over HTTP, from a server on this machine standing in for GitHub's."""
    import functools
    import http.server
    import threading
    served = tmp_path / 'served'
    served.mkdir()
    (served / 'hellaswag_val.jsonl').write_text(''.join(json.dumps(e) + '\n' for e in EXAMPLES))
    (served / 'page.html').write_text('<html>moved</html>\n')
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for name in ('NO_PROXY', 'no_proxy'):
        monkeypatch.setenv(name, '127.0.0.1')
    url = f'http://127.0.0.1:{server.server_address[1]}'
    try:
        path = tmp_path / 'cache' / 'hellaswag_val.jsonl'
        assert len(evaluation.download_hellaswag(path, f'{url}/hellaswag_val.jsonl')) == len(EXAMPLES)
        assert path.read_bytes() == (served / 'hellaswag_val.jsonl').read_bytes()
        for bad, expected in [('page.html', 'line 1 is not JSON'), ('missing.jsonl', 'could not download')]:
            with pytest.raises(SystemExit) as e:
                evaluation.download_hellaswag(tmp_path / 'other' / 'hellaswag_val.jsonl', f'{url}/{bad}')
            assert expected in e.value.code and '\n' not in e.value.code
            assert not (tmp_path / 'other').exists()  # nothing written
    finally:
        server.shutdown()
