#!/usr/bin/env python3
"""Writes tests/fixtures/tokenizer/: two diffusers-style CLIP tokenizer folders and reference ids.

    tools/.venv/bin/python tools/make_tokenizer_fixtures.py

Built from the CLIP vocabulary file shipped in the open_clip_torch wheel (the same file as
assets/clip/bpe_simple_vocab_16e6.txt.gz), without the Hugging Face hub:

- tokenizer/   : vocab.json + merges.txt + tokenizer_config.json + special_tokens_map.json, the layout
                 of stabilityai/stable-diffusion-xl-base-1.0's tokenizer/ (CLIP-L, pad = <|endoftext|>).
- tokenizer_2/ : tokenizer.json (as transformers 5's CLIPTokenizer.save_pretrained writes it, stored
                 compact) + tokenizer_config.json + special_tokens_map.json with pad "!" (bigG).
- ids.json     : for each prompt, the 77 ids from both folders (padding="max_length", max_length=77,
                 truncation=True, as diffusers' SD-XL pipeline calls them) and the untruncated count.
- README.md    : versions used.

Both folders are loaded back with transformers.CLIPTokenizer.from_pretrained to make the references.
"""

import gzip
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "tokenizer"
BPE_GZ = ROOT / "assets" / "clip" / "bpe_simple_vocab_16e6.txt.gz"

PROMPTS = [
    "",
    "a photo of an astronaut riding a horse on mars",
    "A Photo Of An ASTRONAUT Riding A Horse",
    "An astronaut's helmet, isn't it? They're here; we've won, I'm sure you'll see, he'd go.",
    "rock'n'roll ''quoted'' 'single' \"double\" `back`",
    "1024x1024, 8k uhd, 35mm f/1.8, 3.14159, 2024-01-01 12:34:56",
    "   leading   and    trailing   spaces   ",
    "line one\nline two\n\n\ttabbed\r\nwindows\x0bvt\x0cff",
    "non\u00a0breaking\u2003em\u3000ideographic\u200bzero-width",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00fcber Stra\u00dfe \u00c9COLE",
    "cafe\u0301 decomposed accents (NFC)",
    "\u65e5\u672c\u8a9e\u306e\u30d7\u30ed\u30f3\u30d7\u30c8 \u4e2d\u6587\u63d0\u793a\u8bcd \ud55c\uad6d\uc5b4",
    "\u0431\u0435\u043b\u044b\u0439 \u041a\u041e\u0422 \u03bf\u03b4\u039f\u03a3 \u0391\u0398\u0397\u039d\u0391 \u0130stanbul",
    "emoji \U0001f600\U0001f680 \u2764\ufe0f \U0001f468\u200d\U0001f469\u200d\U0001f467 flags \U0001f1ef\U0001f1f5",
    "tom &amp; jerry &lt;3 &quot;cat&quot; &#39;mouse&#39;",
    "masterpiece, best quality, (ultra-detailed:1.2), [[cinematic]], {lighting}",
    "!!!??? ... --- *** ### @@@ $$$ %%% ^^^ ___ ~~~ |||",
    "<|startoftext|>hello<|endoftext|> world <|ENDOFTEXT|> <|StartOfText|>",
    "amazing!!! wow! so cool!? (yes!) !",
    "hyper-realistic portrait of a cyberpunk samurai, neon lights, rain, bokeh, octane render",
    "supercalifragilisticexpialidocious antidisestablishmentarianism pneumonoultramicroscopic",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "x",
    "0123456789 \u0661\u0662\u0663 \u2167 \u00bd \u00b2 \uff11\uff12\uff13",
    "\u00a9 \u00ae \u2122 \u00b0C \u2013 \u2014 \u2026 \u201cquotes\u201d \u2018apos\u2019s\u2019",
    "math \u2211 \u221e \u2248 \u00b1 \u00d7 \u00f7 \u221a  arrows \u2192 \u21d2",
    "control\x00chars\x07and\x1bescape \ufffd replacement",
    "a " * 80,
    "A majestic lion standing on a rocky cliff at sunset, golden hour lighting, dramatic clouds, "
    "highly detailed fur, photorealistic, 8k resolution, shot on Canon EOS R5, 85mm lens, shallow "
    "depth of field, award winning wildlife photography, national geographic style, vivid colors",
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty twenty-one twenty-two twenty-three twenty-four "
    "twenty-five twenty-six twenty-seven twenty-eight twenty-nine thirty thirty-one thirty-two "
    "thirty-three thirty-four thirty-five",
]


def bytes_to_unicode():
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\u00a1"), ord("\u00ac") + 1))
        + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def vocab_and_merges():
    """What openai/CLIP's SimpleTokenizer builds from the .gz (and HF's clip-vit-large-patch14 ships)."""
    lines = gzip.open(BPE_GZ).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    assert len(merges) == 48894 and all(len(m) == 2 for m in merges)
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408 and len(set(vocab)) == 49408
    return {t: i for i, t in enumerate(vocab)}, merges


def special_tokens_map(pad):
    tok = lambda s: {"content": s, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}
    return {
        "bos_token": tok("<|startoftext|>"),
        "eos_token": tok("<|endoftext|>"),
        "pad_token": pad,
        "unk_token": tok("<|endoftext|>"),
    }


def added(content, normalized):
    return {"content": content, "lstrip": False, "normalized": normalized, "rstrip": False,
            "single_word": False, "special": True}


def tokenizer_config(pad):
    # Shape of the hub's SD-XL tokenizer_config.json. With pad "!" (tokenizer_2) the pad token is a
    # special added token too, so a "!" in a prompt is split out as id 0 by transformers.
    if pad == "!":
        decoder = {"0": added("!", False), "49406": added("<|startoftext|>", True),
                   "49407": added("<|endoftext|>", False)}
    else:
        decoder = {"49406": added("<|startoftext|>", True), "49407": added("<|endoftext|>", True)}
    return {
        "add_prefix_space": False,
        "added_tokens_decoder": decoder,
        "bos_token": "<|startoftext|>",
        "clean_up_tokenization_spaces": True,
        "do_lower_case": True,
        "eos_token": "<|endoftext|>",
        "errors": "replace",
        "model_max_length": 77,
        "pad_token": pad,
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": "<|endoftext|>",
    }


def dump(path, obj, compact=False):
    with open(path, "w", encoding="utf-8") as f:
        if compact:
            json.dump(obj, f, ensure_ascii=False, separators=(",", ":"))
        else:
            json.dump(obj, f, ensure_ascii=False, indent=2)
            f.write("\n")


def main():
    import tokenizers
    import transformers
    from transformers import CLIPTokenizer

    vocab, merges = vocab_and_merges()
    if OUT.exists():
        shutil.rmtree(OUT)
    t1_dir, t2_dir = OUT / "tokenizer", OUT / "tokenizer_2"
    t1_dir.mkdir(parents=True)
    t2_dir.mkdir()

    # tokenizer/: the hub layout (vocab.json + merges.txt).
    dump(t1_dir / "vocab.json", vocab, compact=True)
    with open(t1_dir / "merges.txt", "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    dump(t1_dir / "tokenizer_config.json", tokenizer_config("<|endoftext|>"))
    dump(t1_dir / "special_tokens_map.json", special_tokens_map("<|endoftext|>"))

    # tokenizer_2/: tokenizer.json from transformers' own save_pretrained, pad "!".
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as tmp2:
        for f in ("vocab.json", "merges.txt"):
            shutil.copy(t1_dir / f, tmp)
        dump(Path(tmp) / "tokenizer_config.json", tokenizer_config("!"))
        dump(Path(tmp) / "special_tokens_map.json", special_tokens_map("!"))
        CLIPTokenizer.from_pretrained(tmp).save_pretrained(tmp2)
        tj = json.load(open(os.path.join(tmp2, "tokenizer.json"), encoding="utf-8"))
    dump(t2_dir / "tokenizer.json", tj, compact=True)
    dump(t2_dir / "tokenizer_config.json", tokenizer_config("!"))
    dump(t2_dir / "special_tokens_map.json", special_tokens_map("!"))

    t1 = CLIPTokenizer.from_pretrained(t1_dir)
    t2 = CLIPTokenizer.from_pretrained(t2_dir)
    assert (t1.pad_token_id, t2.pad_token_id) == (49407, 0), (t1.pad_token_id, t2.pad_token_id)
    assert t1.get_vocab() == vocab and t2.get_vocab() == vocab

    cases = []
    for p in PROMPTS:
        full1 = t1(p)["input_ids"]
        full2 = t2(p)["input_ids"]
        ids1 = t1(p, padding="max_length", max_length=77, truncation=True)["input_ids"]
        ids2 = t2(p, padding="max_length", max_length=77, truncation=True)["input_ids"]
        assert len(ids1) == len(ids2) == 77
        n = len(full1) - 2
        cases.append(
            {
                "prompt": p,
                "n_tokens": n,
                "truncated": n > 75,
                "truncated_2": len(full2) - 2 > 75,
                "n_tokens_2": len(full2) - 2,
                "tokens": t1.convert_ids_to_tokens(full1[1:-1]),
                "tokens_2": t2.convert_ids_to_tokens(full2[1:-1]),
                "ids_tokenizer": ids1,
                "ids_tokenizer_2": ids2,
            }
        )
    assert any(c["truncated"] for c in cases)
    with open(OUT / "ids.json", "w", encoding="utf-8") as f:
        json.dump(cases, f, ensure_ascii=True, indent=1)
        f.write("\n")

    sha = hashlib.sha256(BPE_GZ.read_bytes()).hexdigest()
    try:
        import ftfy  # noqa: F401

        ftfy_state = "installed (" + ftfy.__version__ + ")"
    except ImportError:
        ftfy_state = "not installed"
    readme = f"""# CLIP tokenizer fixtures

Generated by `tools/make_tokenizer_fixtures.py` (do not edit by hand).

- Python {sys.version.split()[0]}, transformers {transformers.__version__}, tokenizers {tokenizers.__version__}, ftfy {ftfy_state}.
- Vocabulary: `assets/clip/bpe_simple_vocab_16e6.txt.gz` (sha256 `{sha}`), from the open_clip_torch 3.3.0 wheel.
- `tokenizer/`: vocab.json + merges.txt + tokenizer_config.json + special_tokens_map.json, the layout of
  stabilityai/stable-diffusion-xl-base-1.0 `tokenizer/` (pad `<|endoftext|>` = 49407).
- `tokenizer_2/`: tokenizer.json written by `CLIPTokenizer.save_pretrained` (stored without indentation)
  + configs with pad `!` = id 0 (as the hub's `tokenizer_2/`).
- `ids.json`: {len(cases)} prompts; `ids_tokenizer` / `ids_tokenizer_2` = `tok(p, padding="max_length",
  max_length=77, truncation=True).input_ids` from `CLIPTokenizer.from_pretrained` of each folder;
  `n_tokens`/`n_tokens_2` = untruncated token counts without BOS/EOS; `tokens`/`tokens_2` = those tokens
  (for reading). The pad token "!" of tokenizer_2 is a special added token: a "!" in a prompt becomes id 0.
- In transformers 5, `CLIPTokenizer` is the `tokenizers`-backed one (NFC, `\\s+` -> " ", lowercase, CLIP split
  regex, byte-level, BPE with `</w>`); the slow 4.x tokenizer differs on CJK (split per character) and
  control characters (removed).
"""
    (OUT / "README.md").write_text(readme, encoding="utf-8")
    for p in sorted(OUT.rglob("*")):
        if p.is_file():
            print(f"{p.relative_to(ROOT)}: {p.stat().st_size} bytes")


if __name__ == "__main__":
    main()
