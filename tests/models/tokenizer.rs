//! CLIP tokenizer against transformers' `CLIPTokenizer` ids (tests/fixtures/tokenizer, written by
//! tools/make_tokenizer_fixtures.py).

use std::path::{Path, PathBuf};

use atedm::model::tokenizer::{ClipTokenizer, Padding, BOS_ID, EOS_ID, MAX_LEN, VOCAB_SIZE};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer")
}

struct Case {
    prompt: String,
    n_tokens: usize,
    n_tokens_2: usize,
    ids_1: Vec<u32>,
    ids_2: Vec<u32>,
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(fixtures().join("ids.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let ids = |c: &Value, k: &str| -> Vec<u32> {
        c[k].as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    v.as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            prompt: c["prompt"].as_str().unwrap().to_string(),
            n_tokens: c["n_tokens"].as_u64().unwrap() as usize,
            n_tokens_2: c["n_tokens_2"].as_u64().unwrap() as usize,
            ids_1: ids(c, "ids_tokenizer"),
            ids_2: ids(c, "ids_tokenizer_2"),
        })
        .collect()
}

/// Checks every prompt; reports all mismatches at once.
fn check(tok: &ClipTokenizer, name: &str, second: bool) {
    let cases = cases();
    assert!(cases.len() >= 25);
    let mut failures = Vec::new();
    for c in &cases {
        let (want, n) = if second {
            (&c.ids_2, c.n_tokens_2)
        } else {
            (&c.ids_1, c.n_tokens)
        };
        let enc = tok.encode(&c.prompt).unwrap();
        assert_eq!(enc.ids.len(), MAX_LEN);
        if &enc.ids != want || enc.tokens_before_truncation != n || enc.truncated != (n > 75) {
            failures.push(format!(
                "{name}: {:?}\n  got  {:?} (n {}, truncated {})\n  want {:?} (n {n})",
                c.prompt, enc.ids, enc.tokens_before_truncation, enc.truncated, want
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} prompts differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn from_dir_tokenizer_matches_transformers() {
    // vocab.json + merges.txt; pad <|endoftext|> from the configs (the default given is ignored).
    let tok = ClipTokenizer::from_dir(&fixtures().join("tokenizer"), Padding::Id(0)).unwrap();
    assert_eq!(tok.pad_id(), EOS_ID);
    assert_eq!(tok.bos_eos(), (BOS_ID, EOS_ID));
    assert_eq!(tok.vocab_size(), VOCAB_SIZE);
    check(&tok, "tokenizer/", false);
}

#[test]
fn from_dir_tokenizer_2_matches_transformers() {
    // tokenizer.json; pad "!" = 0 from the configs.
    let tok = ClipTokenizer::from_dir(&fixtures().join("tokenizer_2"), Padding::Eos).unwrap();
    assert_eq!(tok.pad_id(), 0);
    check(&tok, "tokenizer_2/", true);
}

#[test]
fn embedded_matches_transformers() {
    let l = ClipTokenizer::embedded(Padding::Eos).unwrap();
    assert_eq!(l.pad_id(), EOS_ID);
    check(&l, "embedded(Eos)", false);
    let g = ClipTokenizer::embedded(Padding::BANG).unwrap();
    assert_eq!(g.pad_id(), 0);
    check(&g, "embedded(Id(0))", true);
}

#[test]
fn embedded_vocabulary_equals_vocab_json() {
    let tok = ClipTokenizer::embedded(Padding::Eos).unwrap();
    let text = std::fs::read_to_string(fixtures().join("tokenizer/vocab.json")).unwrap();
    let vocab: serde_json::Map<String, Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(vocab.len(), VOCAB_SIZE);
    assert_eq!(tok.vocab_size(), VOCAB_SIZE);
    for (k, v) in &vocab {
        assert_eq!(tok.token_id(k), Some(v.as_u64().unwrap() as u32), "{k:?}");
    }
}

#[test]
fn long_prompt_is_truncated() {
    let tok = ClipTokenizer::embedded(Padding::Eos).unwrap();
    let long = "a ".repeat(80);
    let enc = tok.encode(&long).unwrap();
    assert!(enc.truncated);
    assert_eq!(enc.tokens_before_truncation, 80);
    assert_eq!(enc.ids.len(), MAX_LEN);
    assert_eq!(enc.ids[0], BOS_ID);
    assert_eq!(enc.ids[MAX_LEN - 1], EOS_ID);
    assert!(cases().iter().any(|c| c.n_tokens > 75));

    let short = tok.encode("a photo of a cat").unwrap();
    assert!(!short.truncated);
    assert_eq!(short.tokens_before_truncation, 5);
    let empty = tok.encode("").unwrap();
    assert!(!empty.truncated);
    assert_eq!(empty.tokens_before_truncation, 0);
    assert_eq!(&empty.ids[..3], &[BOS_ID, EOS_ID, EOS_ID]);
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("atedm-tokenizer-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn err_text(r: atedm::Result<ClipTokenizer>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_or_corrupt_folder_errors_name_the_path() {
    // Missing folder.
    let missing = std::env::temp_dir().join("atedm-no-such-tokenizer-dir");
    let e = err_text(ClipTokenizer::from_dir(&missing, Padding::Eos));
    assert!(e.contains("atedm-no-such-tokenizer-dir"), "{e}");

    // Empty folder.
    let empty = temp_dir("empty");
    let e = err_text(ClipTokenizer::from_dir(&empty, Padding::Eos));
    assert!(
        e.contains(&empty.display().to_string()) && e.contains("vocab.json"),
        "{e}"
    );

    // Corrupt vocab.json.
    let corrupt = temp_dir("corrupt");
    std::fs::write(corrupt.join("vocab.json"), "{\"a\": 1,").unwrap();
    std::fs::write(corrupt.join("merges.txt"), "#version: 0.2\n").unwrap();
    let e = err_text(ClipTokenizer::from_dir(&corrupt, Padding::Eos));
    assert!(
        e.contains(&corrupt.join("vocab.json").display().to_string()),
        "{e}"
    );

    // Valid JSON but not a CLIP vocabulary.
    std::fs::write(corrupt.join("vocab.json"), "{\"a\": 0}").unwrap();
    let e = err_text(ClipTokenizer::from_dir(&corrupt, Padding::Eos));
    assert!(
        e.contains(&corrupt.join("vocab.json").display().to_string()),
        "{e}"
    );

    // Corrupt tokenizer.json.
    let bad_json = temp_dir("badjson");
    std::fs::write(bad_json.join("tokenizer.json"), "not json").unwrap();
    let e = err_text(ClipTokenizer::from_dir(&bad_json, Padding::Eos));
    assert!(
        e.contains(&bad_json.join("tokenizer.json").display().to_string()),
        "{e}"
    );

    // A bad merges.txt line.
    let bad_merges = temp_dir("badmerges");
    std::fs::copy(
        fixtures().join("tokenizer/vocab.json"),
        bad_merges.join("vocab.json"),
    )
    .unwrap();
    std::fs::write(
        bad_merges.join("merges.txt"),
        "#version: 0.2\ni n\nthree parts here\n",
    )
    .unwrap();
    let e = err_text(ClipTokenizer::from_dir(&bad_merges, Padding::Eos));
    assert!(
        e.contains(&bad_merges.join("merges.txt").display().to_string()),
        "{e}"
    );

    for d in [empty, corrupt, bad_json, bad_merges] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn without_configs_the_default_pad_applies() {
    // tokenizer_2's folder layout with only vocab.json + merges.txt: the caller's pad is used.
    let d = temp_dir("nocfg");
    for f in ["vocab.json", "merges.txt"] {
        std::fs::copy(fixtures().join("tokenizer").join(f), d.join(f)).unwrap();
    }
    let tok = ClipTokenizer::from_dir(&d, Padding::Id(0)).unwrap();
    assert_eq!(tok.pad_id(), 0);
    let enc = tok.encode("a cat").unwrap();
    assert_eq!(enc.ids[4..], [0; MAX_LEN - 4]);
    let tok = ClipTokenizer::from_dir(&d, Padding::Eos).unwrap();
    assert_eq!(tok.pad_id(), EOS_ID);
    let _ = std::fs::remove_dir_all(d);
}
