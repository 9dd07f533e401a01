"""Tests of the language-modelling data loaders (mftrnn/data.py).

No test reads ``../shared/data`` or uses the network: every corpus here is a few lines written to
``tmp_path``, with its sha256 injected into :data:`mftrnn.experiments.data.SHA256`, and downloads go through a fake
fetcher.
"""

from __future__ import annotations

import gzip
import hashlib
import urllib.error

import pytest
import torch

import mftrnn
from mftrnn.experiments import data as D
from mftrnn.experiments.data import DataError, batchify, bptt_batches, load_corpus

TEXTS = {
    "train": " the cat sat \n on the mat \n",
    "valid": " the mat \n",
    "test": " cat on the \n sat \n",
}


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


@pytest.fixture
def no_network(monkeypatch):
    """Any real fetch fails the test."""
    def refuse(url):
        raise AssertionError(f"test tried to fetch {url}")
    monkeypatch.setattr(D, "_fetch", refuse)


@pytest.fixture
def digests(monkeypatch, no_network):
    """Expected digests of TEXTS for both corpora (replacing the real ones for the test's duration)."""
    for name, files in D.CORPORA.items():
        for split, fname in files.items():
            monkeypatch.setitem(D.SHA256, f"{name}/{fname}", _sha(TEXTS[split].encode()))
    monkeypatch.delenv(D.ENV_VAR, raising=False)


def write_corpus(root, name="ptb", gz=True, texts=TEXTS):
    """Write the three splits of ``name`` under ``root/name``; return the paths."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, fname in D.CORPORA[name].items():
        raw = texts[split].encode()
        path = folder / (fname + ".gz" if gz else fname)
        path.write_bytes(gzip.compress(raw) if gz else raw)
        paths[split] = path
    return paths


# ---------------------------------------------------------------------------------------------- loading

@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
@pytest.mark.parametrize("name", ["ptb", "wikitext-2"])
def test_load_gz_and_plain(tmp_path, digests, name, gz):
    paths = write_corpus(tmp_path, name, gz=gz)
    c = load_corpus(name, data_dir=tmp_path)
    assert isinstance(c, D.Corpus) and c.name == name
    assert c.source_files == paths
    assert c.vocab == ["the", "cat", "sat", "<eos>", "on", "mat"]
    assert c.stoi == {w: i for i, w in enumerate(c.vocab)}
    for split in D.SPLITS:
        t = getattr(c, split)
        assert t.dtype == torch.int64 and t.dim() == 1
        assert c.decode(t) == D.tokenize(TEXTS[split])
    assert c.train.tolist() == [0, 1, 2, 3, 4, 0, 5, 3]
    assert c.test.tolist() == [1, 4, 0, 3, 2, 3]
    assert "vocab_size=6" in repr(c)


def test_tokenize_matches_word_language_model():
    assert D.tokenize(" a  b\n\nc\r\nd") == ["a", "b", "<eos>", "<eos>", "c", "<eos>", "d", "<eos>"]
    assert D.tokenize("") == []


def test_vocab_from_train_only(tmp_path, digests):
    write_corpus(tmp_path, "ptb")
    c = load_corpus("ptb", data_dir=tmp_path)
    # valid/test use only train words here; every vocab entry occurs in train, in first-occurrence order
    assert c.vocab == D.build_vocab(D.tokenize(TEXTS["train"]))


def test_out_of_vocabulary_is_an_error(tmp_path, monkeypatch, digests):
    texts = dict(TEXTS, test=" the dog \n")
    monkeypatch.setitem(D.SHA256, "ptb/ptb.test.txt", _sha(texts["test"].encode()))
    write_corpus(tmp_path, "ptb", texts=texts)
    with pytest.raises(DataError, match=r"out-of-vocabulary.*test.*'dog'"):
        load_corpus("ptb", data_dir=tmp_path)


def test_checksum_mismatch(tmp_path, digests):
    paths = write_corpus(tmp_path, "ptb", gz=False)
    paths["valid"].write_bytes(b" the mat")  # truncated: the final newline is lost
    with pytest.raises(DataError) as info:
        load_corpus("ptb", data_dir=tmp_path)
    msg = str(info.value)
    assert isinstance(info.value, mftrnn.MftrnnError)
    assert str(paths["valid"]) in msg and "checksum mismatch" in msg
    assert D.SHA256["ptb/ptb.valid.txt"] in msg and _sha(b" the mat") in msg


def test_truncated_gzip(tmp_path, digests):
    paths = write_corpus(tmp_path, "ptb", gz=True)
    blob = paths["train"].read_bytes()
    paths["train"].write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match=r"ptb\.train\.txt\.gz.*(corrupt|truncated)"):
        load_corpus("ptb", data_dir=tmp_path)


def test_missing_data_message(tmp_path, digests):
    with pytest.raises(DataError) as info:
        load_corpus("wikitext-2", data_dir=tmp_path / "nowhere")
    msg = str(info.value)
    assert str(tmp_path / "nowhere" / "wikitext-2") in msg  # which folder was searched
    assert "MFTRNN_DATA" in msg  # how to point at the data
    assert "--download" in msg and "https://raw.githubusercontent.com/pytorch/examples" in msg
    assert "train.txt" in msg


def test_partially_missing_names_only_the_missing_file(tmp_path, digests):
    paths = write_corpus(tmp_path, "ptb")
    paths["test"].unlink()
    with pytest.raises(DataError, match=r"missing ptb\.test\.txt\[\.gz\] in") as info:
        load_corpus("ptb", data_dir=tmp_path)
    assert "ptb.train.txt" not in str(info.value).split(" in ")[0]


def test_unknown_corpus():
    with pytest.raises(DataError, match="unknown corpus 'ptb2'"):
        load_corpus("ptb2")


def test_env_var_selects_folder(tmp_path, monkeypatch, digests):
    write_corpus(tmp_path / "mine", "ptb")
    monkeypatch.setenv("MFTRNN_DATA", str(tmp_path / "mine"))
    c = load_corpus("ptb")
    assert c.source_files["train"].parent == tmp_path / "mine" / "ptb"
    # the argument wins over the environment variable
    with pytest.raises(DataError, match="other"):
        load_corpus("ptb", data_dir=tmp_path / "other")


def test_default_candidates(monkeypatch, tmp_path):
    monkeypatch.delenv(D.ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path / ".")
    repo = D._repo_root()
    cands = D.candidate_data_dirs()
    assert cands[0] == (repo.parent / "shared" / "data").resolve()
    assert cands[-1] == (tmp_path.parent / "shared" / "data").resolve()
    monkeypatch.setenv(D.ENV_VAR, "  ")  # blank counts as unset
    assert D.candidate_data_dirs() == cands


def test_default_search_falls_back_to_cwd(tmp_path, monkeypatch, digests):
    """With no argument or env var, ../shared/data relative to the current directory is tried too."""
    monkeypatch.setattr(D, "_repo_root", lambda: tmp_path / "elsewhere" / "repo")  # no data beside it
    write_corpus(tmp_path / "shared" / "data", "ptb")
    (tmp_path / "checkout").mkdir()
    monkeypatch.chdir(tmp_path / "checkout")
    c = load_corpus("ptb")
    assert c.source_files["train"].parent == (tmp_path / "shared" / "data" / "ptb").resolve()
    # with no data at either place the message lists the (resolved, deduplicated) folders searched
    (tmp_path / "elsewhere" / "cwd").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "elsewhere" / "cwd")
    with pytest.raises(DataError) as info:
        load_corpus("ptb")
    msg = str(info.value)
    assert f"searched: {(tmp_path / 'elsewhere' / 'shared' / 'data' / 'ptb').resolve()})" in msg


# ---------------------------------------------------------------------------------------------- download

class FakeFetcher:
    """Serves bytes by file name in place of the network, and records the URLs asked for."""

    def __init__(self, payloads):
        self.payloads, self.urls = payloads, []

    def __call__(self, url):
        self.urls.append(url)
        name = url.rsplit("/", 1)[-1]
        if name not in self.payloads:
            raise urllib.error.URLError("not found")
        return self.payloads[name]


@pytest.mark.parametrize("served_gz", [False, True], ids=["plain", "gz"])
def test_download_success(tmp_path, monkeypatch, digests, served_gz):
    payloads = {f: TEXTS[s].encode() for s, f in D.CORPORA["ptb"].items()}
    if served_gz:
        payloads = {f: gzip.compress(b) for f, b in payloads.items()}
    fake = FakeFetcher(payloads)
    monkeypatch.setattr(D, "_fetch", fake)
    root = tmp_path / "new"
    c = load_corpus("ptb", data_dir=root, download=True)
    files = ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt")
    assert fake.urls == [D.URLS["ptb"].format(file=f) for f in files]
    assert c.vocab[:3] == ["the", "cat", "sat"]
    suffix = ".gz" if served_gz else ""
    assert sorted(p.name for p in (root / "ptb").iterdir()) == sorted(f + suffix for f in payloads)
    # a second load finds the files and fetches nothing
    fake.urls.clear()
    assert load_corpus("ptb", data_dir=root, download=True).train.tolist() == c.train.tolist()
    assert fake.urls == []


def test_download_only_missing_files(tmp_path, monkeypatch, digests):
    paths = write_corpus(tmp_path, "wikitext-2")
    paths["valid"].unlink()
    fake = FakeFetcher({"valid.txt": TEXTS["valid"].encode()})
    monkeypatch.setattr(D, "_fetch", fake)
    c = load_corpus("wikitext-2", data_dir=tmp_path, download=True)
    assert fake.urls == [D.URLS["wikitext-2"].format(file="valid.txt")]
    assert c.source_files["valid"] == tmp_path / "wikitext-2" / "valid.txt"


def test_download_wrong_checksum_leaves_nothing(tmp_path, monkeypatch, digests):
    fake = FakeFetcher({"ptb.train.txt": b"tampered\n", "ptb.valid.txt": b"x\n", "ptb.test.txt": b"y\n"})
    monkeypatch.setattr(D, "_fetch", fake)
    root = tmp_path / "dl"
    pattern = r"checksum mismatch for download of https://.*ptb\.train\.txt"
    with pytest.raises(DataError, match=pattern) as info:
        load_corpus("ptb", data_dir=root, download=True)
    assert _sha(b"tampered\n") in str(info.value)
    folder = root / "ptb"
    assert not folder.exists() or list(folder.iterdir()) == []  # no file, no temp file


def test_download_network_error(tmp_path, monkeypatch, digests):
    monkeypatch.setattr(D, "_fetch", FakeFetcher({}))
    with pytest.raises(DataError, match=r"download of https://.*ptb\.train\.txt failed"):
        load_corpus("ptb", data_dir=tmp_path, download=True)
    assert not (tmp_path / "ptb").exists() or list((tmp_path / "ptb").iterdir()) == []


def test_write_failure_leaves_no_temp_file(tmp_path, monkeypatch):
    def boom(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(D.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        D._write_atomic(b"abc", tmp_path / "f.txt")
    assert list(tmp_path.iterdir()) == []


def test_corrupt_present_file_is_not_replaced_by_download(tmp_path, monkeypatch, digests):
    paths = write_corpus(tmp_path, "ptb", gz=False)
    paths["train"].write_bytes(b"corrupt\n")
    fake = FakeFetcher({})
    monkeypatch.setattr(D, "_fetch", fake)
    with pytest.raises(DataError, match="checksum mismatch"):
        load_corpus("ptb", data_dir=tmp_path, download=True)
    assert fake.urls == [] and paths["train"].read_bytes() == b"corrupt\n"


# ---------------------------------------------------------------------------------------------- batching

def test_batchify_layout():
    tokens = torch.arange(23)
    data = batchify(tokens, 4)
    assert data.shape == (5, 4) and data.dtype == tokens.dtype and data.is_contiguous()
    # column b is the contiguous chunk tokens[5b:5b+5]; the remainder 20..22 is dropped
    assert data[:, 1].tolist() == [5, 6, 7, 8, 9]
    assert data.t().reshape(-1).tolist() == list(range(20))


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_batchify_rejects_bad_batch_size(bad):
    with pytest.raises(DataError, match="batch_size"):
        batchify(torch.arange(10), bad)


def test_batchify_errors():
    with pytest.raises(DataError, match="fewer than"):
        batchify(torch.arange(3), 4)
    with pytest.raises(DataError, match="1-D"):
        batchify(torch.zeros(2, 3, dtype=torch.int64), 1)


def test_bptt_batches_shapes_and_targets():
    data = batchify(torch.arange(40), 2)  # (20, 2)
    windows = list(bptt_batches(data, 6))
    assert [x.shape[0] for x, _ in windows] == [6, 6, 6, 1]  # 19 predictable steps
    for (x, y), start in zip(windows, range(0, 20, 6)):
        assert x.shape == y.shape and x.shape[1] == 2
        assert torch.equal(x, data[start:start + x.shape[0]])
        assert torch.equal(y, data[start + 1:start + 1 + x.shape[0]])
        assert torch.equal(y[:-1], x[1:])  # target is the input shifted by one step
    # every (input, target) pair of consecutive rows is seen exactly once
    assert torch.equal(torch.cat([x for x, _ in windows]), data[:-1])
    assert torch.equal(torch.cat([y for _, y in windows]), data[1:])


def test_bptt_batches_edge_cases():
    data = batchify(torch.arange(10), 1)
    assert [x.shape[0] for x, _ in bptt_batches(data, 100)] == [9]
    assert list(bptt_batches(data[:1], 3)) == []
    with pytest.raises(DataError, match="bptt"):
        list(bptt_batches(data, 0))
    with pytest.raises(DataError, match=r"\(T, B\)"):
        list(bptt_batches(torch.arange(10), 3))
