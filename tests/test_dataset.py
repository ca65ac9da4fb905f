import numpy as np
import pytest
import torch

from conftest import run_script
from nanogpt.data import char_vocab, get_batch, load_meta, load_tokenizer, open_split, write_dataset


def test_batches_are_windows_shifted_by_one():
    data = np.arange(1000, dtype=np.uint16)
    x, y = get_batch(data, 8, 16, (1, 2, 3))
    assert x.shape == y.shape == (8, 16) and x.dtype == torch.int64
    assert torch.equal(y[:, :-1], x[:, 1:])
    assert torch.equal(y[:, -1], x[:, -1] + 1)
    assert torch.equal(x[:, 1:] - x[:, :-1], torch.ones(8, 15, dtype=torch.int64))  # consecutive tokens


def test_batches_are_a_function_of_the_seed():
    data = np.random.default_rng(0).integers(0, 60000, 5000).astype(np.uint16)
    a, _ = get_batch(data, 4, 8, (1337, 0, 0, 5, 0))
    b, _ = get_batch(data, 4, 8, (1337, 0, 0, 5, 0))
    c, _ = get_batch(data, 4, 8, (1337, 0, 0, 5, 1))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_vectorised_gather_equals_a_loop_over_rows():
    data = np.random.default_rng(0).integers(0, 60000, 5000).astype(np.uint16)
    x, y = get_batch(data, 6, 10, (7,))
    starts = np.random.default_rng((7,)).integers(0, len(data) - 10, size=6)
    expected_x = torch.stack([torch.from_numpy(data[i:i + 10].astype(np.int64)) for i in starts])
    expected_y = torch.stack([torch.from_numpy(data[i + 1:i + 11].astype(np.int64)) for i in starts])
    assert torch.equal(x, expected_x) and torch.equal(y, expected_y)


def test_write_dataset_picks_the_token_dtype(tmp_path):
    meta = write_dataset(tmp_path / 'a', [1, 2, 3], [4, 5], {'vocab_size': 100})
    assert meta['dtype'] == 'uint16' and (tmp_path / 'a' / 'train.bin').stat().st_size == 6
    meta = write_dataset(tmp_path / 'b', [70000, 2, 3], [4, 5], {'vocab_size': 70001})
    assert meta['dtype'] == 'uint32' and (tmp_path / 'b' / 'train.bin').stat().st_size == 12
    assert load_meta(str(tmp_path / 'b'))['dtype'] == 'uint32'
    data = open_split(str(tmp_path / 'b'), 'train', meta, 2, 70001)
    assert data.dtype == np.uint32 and int(data[0]) == 70000


def test_open_split_errors(tmp_path):
    write_dataset(tmp_path / 'd', list(range(10)), list(range(5)), {'vocab_size': 8})
    with pytest.raises(SystemExit, match='no dataset folder'):
        open_split(str(tmp_path / 'missing'), 'train', {}, 4, 10)
    with pytest.raises(SystemExit, match=r'val.bin has 5 tokens, it needs more than block_size=5'):
        open_split(str(tmp_path / 'd'), 'val', {}, 5, 10)
    with pytest.raises(SystemExit, match=r'token id 9, not below the model.s vocab_size 8'):
        open_split(str(tmp_path / 'd'), 'train', {}, 4, 8)


def test_char_tokenizer_round_trip_and_unknown_characters():
    stoi, itos = char_vocab("hello world")
    encode, decode_bytes = load_tokenizer({'stoi': stoi, 'itos': itos, 'vocab_size': len(stoi)})
    assert decode_bytes(encode("low hello")).decode() == "low hello"
    with pytest.raises(SystemExit, match=r"not in the vocabulary of this dataset: 'x', 'z'"):
        encode("hero x z")


def test_shakespeare_char_prepare_counts(project):
    folder = project / 'data' / 'shakespeare_char'
    meta = load_meta(str(folder))
    assert meta['vocab_size'] == 65 and len(meta['itos']) == 65 and meta['dtype'] == 'uint16'
    assert (folder / 'train.bin').stat().st_size == 2 * 1_003_854
    assert (folder / 'val.bin').stat().st_size == 2 * 111_540


def test_prepare_takes_another_text_and_leaves_the_shipped_one(tmp_path):
    from conftest import SHAKESPEARE_TXT, copy_project
    copy_project(tmp_path)
    folder = tmp_path / 'data' / 'shakespeare_char'
    other = tmp_path / 'other.txt'
    other.write_text('abcdefghij' * 100, encoding='utf-8')
    run_script(tmp_path, 'data/shakespeare_char/prepare.py', other)
    assert load_meta(str(folder))['vocab_size'] == 10
    assert (folder / 'train.bin').stat().st_size == 2 * 900 and (folder / 'val.bin').stat().st_size == 2 * 100
    assert (folder / 'input.txt').read_bytes() == SHAKESPEARE_TXT.read_bytes()  # not replaced by the other text

    proc = run_script(tmp_path, 'data/shakespeare_char/prepare.py', tmp_path / 'missing.txt', check=False)
    assert proc.returncode != 0 and 'Traceback' not in proc.stderr
    assert proc.stderr.strip() == f"error: cannot read {tmp_path / 'missing.txt'}: [Errno 2] No such file or directory: " \
                                  f"'{tmp_path / 'missing.txt'}'"
    assert (folder / 'train.bin').stat().st_size == 2 * 900  # the dataset prepared before is still whole


def test_gpt2_tokens_that_split_a_character_decode_safely_one_at_a_time(gpt2_bpe, monkeypatch):
    import codecs
    monkeypatch.setenv('NANOGPT_GPT2_BPE', str(gpt2_bpe))
    encode, decode_bytes = load_tokenizer({'tokenizer': 'gpt2', 'vocab_size': 50304})
    text = "naïve 漢字🙂 done"
    ids = encode(text)
    pieces = [decode_bytes([i]) for i in ids]
    assert any(p.decode('utf-8', errors='replace') != p.decode('utf-8', errors='ignore') for p in pieces)  # a split
    decoder = codecs.getincrementaldecoder('utf-8')(errors='replace')  # as sample.py streams
    streamed = ''.join(decoder.decode(p) for p in pieces) + decoder.decode(b'', final=True)
    assert streamed == text


# ----------------------------------------------------------------------------- sharded splits

def write_shards(folder, split, shards, dtype=np.uint16):
    folder.mkdir(parents=True, exist_ok=True)
    for i, tokens in enumerate(shards):
        np.asarray(tokens, dtype=dtype).tofile(folder / f'{split}_{i:03d}.bin')


def test_shards_read_as_one_split(tmp_path):
    rng = np.random.default_rng(0)
    lengths = [700, 40, 1200, 5, 300]  # one shard too short for a window, one with a single window
    shards = [rng.integers(0, 60000, n).astype(np.uint16) for n in lengths]
    write_shards(tmp_path / 'd', 'train', shards)
    data = open_split(str(tmp_path / 'd'), 'train', {}, 39, 60000)
    joined = np.concatenate(shards)
    assert len(data) == len(joined) and data.dtype == np.uint16
    assert np.array_equal(data.astype(np.int64), joined) and np.array_equal(data[650:1000], joined[650:1000])
    assert data[741] == joined[741] and data[-1] == joined[-1]

    # the reference: every window that fits in one shard, listed shard after shard, drawn uniformly
    windows = [(s, i) for s, n in enumerate(lengths) for i in range(n - 39)]
    for seed in [(1,), (1337, 0, 5, 3), (2, 2)]:
        x, y = get_batch(data, 64, 39, seed)
        picks = np.random.default_rng(seed).integers(0, len(windows), size=64)
        expected = np.stack([shards[s][i:i + 40] for s, i in (windows[k] for k in picks)]).astype(np.int64)
        assert torch.equal(x, torch.from_numpy(expected[:, :-1])) and torch.equal(y, torch.from_numpy(expected[:, 1:]))
    # over many batches each shard is chosen in proportion to its windows, and the short one never
    x, _ = get_batch(data, 20000, 39, (7,))
    first = x[:, 0].numpy()
    counts = [np.isin(first, shard[:max(n - 39, 0)]).mean() for shard, n in zip(shards, lengths)]
    expected = np.array([max(n - 39, 0) for n in lengths]) / len(windows)
    np.testing.assert_allclose(counts, expected, atol=0.02)


def test_one_shard_draws_the_batches_of_one_file(tmp_path):
    tokens = np.random.default_rng(1).integers(0, 65, 3000).astype(np.uint16)
    write_dataset(tmp_path / 'file', tokens, tokens[:100], {'vocab_size': 65})
    write_shards(tmp_path / 'shard', 'train', [tokens])
    single = open_split(str(tmp_path / 'file'), 'train', {}, 16, 65)
    sharded = open_split(str(tmp_path / 'shard'), 'train', {}, 16, 65)
    assert isinstance(single, np.memmap) and not isinstance(sharded, np.memmap)
    for seed in [(1337, 0, 0, 0), (1337, 1, 4, 0, 3)]:
        a, b = get_batch(single, 8, 16, seed, 65), get_batch(sharded, 8, 16, seed, 65)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_sharded_split_errors(tmp_path):
    def fails(folder, split='train', block_size=4, vocab_size=100):
        with pytest.raises(SystemExit) as e:
            open_split(str(folder), split, {}, block_size, vocab_size)
        assert e.value.code.startswith('error: ') and '\n' not in e.value.code
        return e.value.code

    write_shards(tmp_path / 'gap', 'train', [range(20)] * 3)
    (tmp_path / 'gap' / 'train_001.bin').unlink()
    assert f"{tmp_path / 'gap' / 'train_001.bin'} is missing: the train shards must be numbered from 000" in fails(tmp_path / 'gap')
    write_shards(tmp_path / 'twice', 'train', [range(20)] * 2)
    (tmp_path / 'twice' / 'train_0001.bin').write_bytes(bytes(40))
    assert 'holds train_0001.bin and train_001.bin, two shards numbered 1' in fails(tmp_path / 'twice')
    write_shards(tmp_path / 'torn', 'train', [range(20)] * 2)
    with open(tmp_path / 'torn' / 'train_001.bin', 'ab') as f:
        f.write(b'\x01')  # half a token
    assert f"{tmp_path / 'torn' / 'train_001.bin'} is not a whole number of uint16 tokens" in fails(tmp_path / 'torn')
    write_shards(tmp_path / 'both', 'train', [range(20)])
    (tmp_path / 'both' / 'train.bin').write_bytes(bytes(40))
    assert 'holds both train.bin and train shards' in fails(tmp_path / 'both')
    write_shards(tmp_path / 'short', 'train', [range(4), range(3)])
    assert 'no shard of' in fails(tmp_path / 'short') and 'more than block_size=4 tokens' in fails(tmp_path / 'short')
    write_shards(tmp_path / 'ids', 'train', [range(20), range(90, 110)])
    assert f"{tmp_path / 'ids' / 'train_001.bin'} holds token id 109, not below" in fails(tmp_path / 'ids')
    assert 'val.bin does not exist (nor val_000.bin)' in fails(tmp_path / 'ids', 'val')
    (tmp_path / 'ids' / 'train_002.bin.tmp').write_bytes(bytes(7))  # an interrupted write's leftover: not a shard
    assert len(open_split(str(tmp_path / 'ids'), 'train', {}, 4, 110)) == 40
