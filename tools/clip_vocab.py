"""CLIP tokenizer files built offline from the OpenAI CLIP BPE file
(bpe_simple_vocab_16e6.txt.gz, MIT-licensed, shipped in the open_clip_torch wheel which is
installed without dependencies; only the data file is used).  Shared by
make_pipeline_fixtures.py and train_demo.py; import it inside tools/.venv."""

import gzip
import importlib.util
import json
import os

N_MERGES = 49152 - 256 - 2  # 48894, as in CLIP's SimpleTokenizer


def _bpe_gz_path():
    # The engine ships the same file (assets/clip, MIT); open_clip_torch is the fallback.
    shipped = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "assets", "clip",
                           "bpe_simple_vocab_16e6.txt.gz")
    if os.path.exists(shipped):
        return shipped
    spec = importlib.util.find_spec("open_clip")  # the package itself fails to import (no deps)
    assert spec is not None and spec.submodule_search_locations, "open_clip_torch is not installed"
    return os.path.join(list(spec.submodule_search_locations)[0], "bpe_simple_vocab_16e6.txt.gz")


def _bytes_to_unicode():
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def clip_vocab_files():
    """(vocab.json text, merges.txt text), laid out like openai/clip-vit-large-patch14."""
    with gzip.open(_bpe_gz_path()) as f:
        lines = f.read().decode("utf-8").split("\n")
    merges = lines[1:N_MERGES + 1]
    assert len(merges) == N_MERGES
    vocab = list(_bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m.split(" ")) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408 and len(set(vocab)) == 49408
    vocab_json = json.dumps({v: i for i, v in enumerate(vocab)}, ensure_ascii=False,
                            separators=(",", ":"))
    merges_txt = "#version: 0.2\n" + "\n".join(merges) + "\n"
    return vocab_json, merges_txt


def write_tokenizer_folder(tok, folder, vocab_json, merges_txt):
    """tokenizer_config.json from save_pretrained, plus vocab.json + merges.txt (the layout of
    the real SD-XL repo) instead of the 3.6 MB tokenizer.json transformers 5 writes."""
    tok.save_pretrained(folder)
    for fn in os.listdir(folder):
        if fn != "tokenizer_config.json":
            os.remove(os.path.join(folder, fn))
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8", newline="\n") as f:
        f.write(vocab_json)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8", newline="\n") as f:
        f.write(merges_txt)


def clip_tokenizers(vocab_json, merges_txt, tmp_dir):
    """(tokenizer, tokenizer_2) as in SD-XL: tokenizer_2 pads with "!" (id 0)."""
    from transformers import CLIPTokenizer
    os.makedirs(tmp_dir, exist_ok=True)
    vocab, merges = os.path.join(tmp_dir, "vocab.json"), os.path.join(tmp_dir, "merges.txt")
    with open(vocab, "w", encoding="utf-8") as f:
        f.write(vocab_json)
    with open(merges, "w", encoding="utf-8") as f:
        f.write(merges_txt)
    tok1 = CLIPTokenizer(vocab=vocab, merges=merges, pad_token="<|endoftext|>", model_max_length=77)
    tok2 = CLIPTokenizer(vocab=vocab, merges=merges, pad_token="!", model_max_length=77)
    os.remove(vocab)
    os.remove(merges)
    os.rmdir(tmp_dir)
    return tok1, tok2
