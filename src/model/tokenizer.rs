//! CLIP byte-level BPE tokenizer, equal to transformers' `CLIPTokenizer` as diffusers' SD-XL
//! pipeline calls it (`padding="max_length", max_length=77, truncation=True`).
//!
//! transformers 5's `CLIPTokenizer` is the `tokenizers`-backed one; its pipeline, reproduced here:
//! 1. added (special) tokens are split out of the prompt first: those with `normalized: false` on the
//!    raw text, the others on the normalized text (leftmost-longest match). SD-XL's `tokenizer_2`
//!    registers its pad token `"!"` this way, so every `"!"` in a prompt becomes id 0 there.
//! 2. normalizer: NFC, `\s+` -> `" "`, per-character lowercase;
//! 3. pre-tokenizer: the CLIP split regex (matches kept, the rest dropped), then byte-level's
//!    GPT-2 regex on each piece, then bytes mapped to printable characters (`bytes_to_unicode`);
//! 4. BPE with `"</w>"` appended to each word's last symbol, lowest merge rank first;
//! 5. BOS + tokens (truncated to 75) + EOS, padded to 77 with the pad id.
//!
//! The slow tokenizer of transformers 4.x (without ftfy) differs on CJK text (one word per
//! character) and control characters (removed); the original openai/CLIP tokenizer also runs
//! ftfy and `html.unescape`. Neither is reproduced: transformers 5 is the reference.
//!
//! A compact implementation on `regex` rather than the `tokenizers` crate: CLIP needs only a BPE
//! model and two regexes, while `tokenizers` brings a large dependency tree (rayon, onig's C build
//! or fancy-regex, serde models of every tokenizer kind) into an engine that needs one tokenizer.
//! `tests/models/tokenizer.rs` locks the ids to transformers' on a varied prompt set.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use regex::Regex;
use serde_json::Value;
use unicode_normalization::UnicodeNormalization;

use crate::error::{Error, Result};

/// Sequence length of both SD-XL text encoders.
pub const MAX_LEN: usize = 77;
/// Prompt tokens that fit between BOS and EOS.
pub const MAX_PROMPT_TOKENS: usize = MAX_LEN - 2;
/// `<|startoftext|>` in the CLIP vocabulary.
pub const BOS_ID: u32 = 49406;
/// `<|endoftext|>` in the CLIP vocabulary.
pub const EOS_ID: u32 = 49407;
/// Vocabulary size (256 bytes + 256 bytes with `</w>` + 48,894 merges + 2 specials).
pub const VOCAB_SIZE: usize = 49408;
/// Number of merges CLIP uses from `bpe_simple_vocab_16e6.txt`.
pub const NUM_MERGES: usize = 48894;

const BOS: &str = "<|startoftext|>";
const EOS: &str = "<|endoftext|>";
const EOW: &str = "</w>";
const CLIP_SPLIT: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";
/// GPT-2's regex as the byte-level pre-tokenizer applies it; pieces never hold whitespace here, so
/// its whitespace alternatives (and their look-ahead) are left out.
const BYTE_LEVEL_SPLIT: &str = r"'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}+|[^\s\p{L}\p{N}]+";

static EMBEDDED_BPE: &[u8] = include_bytes!("../../assets/clip/bpe_simple_vocab_16e6.txt.gz");

/// Which id fills the sequence after EOS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Padding {
    /// `<|endoftext|>` (49407): SD-XL's `tokenizer/` (CLIP-L).
    Eos,
    /// Another vocabulary id: `Id(0)` (`"!"`) for SD-XL's `tokenizer_2/` (OpenCLIP bigG).
    Id(u32),
}

impl Padding {
    /// SD-XL's `tokenizer_2/` padding: `"!"`, id 0.
    pub const BANG: Padding = Padding::Id(0);
}

/// A prompt encoded for a CLIP text encoder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    /// BOS, up to 75 prompt tokens, EOS, then padding: always [`MAX_LEN`] ids.
    pub ids: Vec<u32>,
    /// Whether prompt tokens were dropped to fit.
    pub truncated: bool,
    /// Prompt tokens (without BOS/EOS) before truncation.
    pub tokens_before_truncation: usize,
}

#[derive(Clone, Debug)]
struct AddedToken {
    content: String,
    id: u32,
    /// Matched on the normalized (lowercased, NFC) text rather than the raw prompt.
    normalized: bool,
}

/// CLIP BPE tokenizer (see the module docs).
pub struct ClipTokenizer {
    vocab: HashMap<String, u32>,
    /// (left id, right id) -> (rank, merged id).
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Id of each byte's character, and of that character + `</w>`.
    byte_ids: [u32; 256],
    byte_eow_ids: [u32; 256],
    added: Vec<AddedToken>,
    bos_id: u32,
    eos_id: u32,
    pad_id: u32,
    clip_split: Regex,
    byte_level_split: Regex,
    whitespace: Regex,
}

/// GPT-2's reversible byte -> printable character map.
fn bytes_to_unicode() -> Vec<(u8, char)> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    bs.into_iter()
        .zip(cs)
        .map(|(b, c)| (b as u8, char::from_u32(c).expect("valid char")))
        .collect()
}

fn invalid(path: &Path, message: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("CLIP tokenizer: {}: {message}", path.display()))
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })
}

fn read_json(path: &Path) -> Result<Value> {
    let text = read_text(path)?;
    serde_json::from_str(&text).map_err(|e| invalid(path, format!("invalid JSON: {e}")))
}

/// Content and `normalized` flag of a token entry: a string, or an AddedToken object.
fn token_entry(v: &Value) -> Option<(String, Option<bool>)> {
    match v {
        Value::String(s) => Some((s.clone(), None)),
        Value::Object(o) => Some((
            o.get("content")?.as_str()?.to_string(),
            o.get("normalized").and_then(Value::as_bool),
        )),
        _ => None,
    }
}

impl ClipTokenizer {
    /// Builds a tokenizer from a vocabulary and an ordered merge list (rank = index).
    fn build(
        vocab: HashMap<String, u32>,
        merge_list: &[(String, String)],
        added: Vec<AddedToken>,
        pad: Padding,
        source: &Path,
    ) -> Result<Self> {
        let id_of = |tok: &str| -> Result<u32> {
            vocab
                .get(tok)
                .copied()
                .ok_or_else(|| invalid(source, format!("token {tok:?} is not in the vocabulary")))
        };
        let mut byte_ids = [0u32; 256];
        let mut byte_eow_ids = [0u32; 256];
        for (b, c) in bytes_to_unicode() {
            byte_ids[b as usize] = id_of(&c.to_string())?;
            byte_eow_ids[b as usize] = id_of(&format!("{c}{EOW}"))?;
        }
        let mut merges = HashMap::with_capacity(merge_list.len());
        for (rank, (a, b)) in merge_list.iter().enumerate() {
            let key = (id_of(a)?, id_of(b)?);
            let merged = id_of(&format!("{a}{b}"))?;
            merges.entry(key).or_insert((rank as u32, merged));
        }
        let bos_id = id_of(BOS)?;
        let eos_id = id_of(EOS)?;
        let pad_id = match pad {
            Padding::Eos => eos_id,
            Padding::Id(id) => id,
        };
        if !vocab.values().any(|&v| v == pad_id) {
            return Err(invalid(
                source,
                format!("pad id {pad_id} is not in the vocabulary"),
            ));
        }
        Ok(Self {
            vocab,
            merges,
            byte_ids,
            byte_eow_ids,
            added,
            bos_id,
            eos_id,
            pad_id,
            clip_split: Regex::new(CLIP_SPLIT).expect("valid regex"),
            byte_level_split: Regex::new(BYTE_LEVEL_SPLIT).expect("valid regex"),
            whitespace: Regex::new(r"\s+").expect("valid regex"),
        })
    }

    /// From a diffusers tokenizer folder (`tokenizer/` or `tokenizer_2/`): `tokenizer.json`, or
    /// `vocab.json` + `merges.txt`. Special tokens (and whether they match before or after
    /// normalization) come from `tokenizer.json`'s `added_tokens` or `tokenizer_config.json`'s
    /// `added_tokens_decoder`, plus the bos/eos/unk/pad tokens named in `special_tokens_map.json` /
    /// `tokenizer_config.json`. The pad token named there wins over `default_pad`
    /// (SD-XL: `tokenizer/` pads with `<|endoftext|>`, `tokenizer_2/` with `"!"`).
    pub fn from_dir(dir: &Path, default_pad: Padding) -> Result<Self> {
        if !dir.is_dir() {
            return Err(invalid(dir, "tokenizer folder not found"));
        }
        let tokenizer_json = dir.join("tokenizer.json");
        let config_path = dir.join("tokenizer_config.json");
        let map_path = dir.join("special_tokens_map.json");
        let config = if config_path.is_file() {
            Some(read_json(&config_path)?)
        } else {
            None
        };
        let special_map = if map_path.is_file() {
            Some(read_json(&map_path)?)
        } else {
            None
        };

        let (vocab, merge_list, mut added, source) = if tokenizer_json.is_file() {
            let (v, m, a) = Self::parse_tokenizer_json(&tokenizer_json)?;
            (v, m, a, tokenizer_json)
        } else {
            let vocab_path = dir.join("vocab.json");
            let merges_path = dir.join("merges.txt");
            if !vocab_path.is_file() || !merges_path.is_file() {
                return Err(invalid(
                    dir,
                    "neither tokenizer.json nor vocab.json + merges.txt found",
                ));
            }
            let vocab = Self::parse_vocab(&read_json(&vocab_path)?, &vocab_path)?;
            let merges = Self::parse_merges_txt(&read_text(&merges_path)?, &merges_path)?;
            let mut added = Vec::new();
            if let Some(decoder) = config
                .as_ref()
                .and_then(|c| c.get("added_tokens_decoder"))
                .and_then(Value::as_object)
            {
                for (id, entry) in decoder {
                    let id: u32 = id
                        .parse()
                        .map_err(|_| invalid(&config_path, format!("bad added token id {id:?}")))?;
                    let (content, normalized) = token_entry(entry)
                        .ok_or_else(|| invalid(&config_path, format!("bad added token {id}")))?;
                    added.push(AddedToken {
                        content,
                        id,
                        normalized: normalized.unwrap_or(false),
                    });
                }
            }
            (vocab, merges, added, vocab_path)
        };

        // Special tokens named in the configs (special_tokens_map.json first, as transformers).
        let named = |key: &str| -> Option<(String, Option<bool>)> {
            [&special_map, &config]
                .into_iter()
                .flatten()
                .find_map(|v| v.get(key).and_then(token_entry))
        };
        for key in ["bos_token", "eos_token", "unk_token", "pad_token"] {
            if let Some((content, _)) = named(key) {
                if added.iter().all(|t| t.content != content) {
                    let id = *vocab.get(&content).ok_or_else(|| {
                        invalid(dir, format!("{key} {content:?} is not in the vocabulary"))
                    })?;
                    added.push(AddedToken {
                        content,
                        id,
                        normalized: false,
                    });
                }
            }
        }
        let pad = match named("pad_token") {
            Some((content, _)) => Padding::Id(
                added
                    .iter()
                    .find(|t| t.content == content)
                    .map(|t| t.id)
                    .expect("pad token registered above"),
            ),
            None => default_pad,
        };
        Self::build(vocab, &merge_list, added, pad, &source)
    }

    /// The vocabulary shipped with the engine (`assets/clip/bpe_simple_vocab_16e6.txt.gz`, from
    /// OpenAI CLIP via open_clip), for single-file checkpoints. Special tokens are set up as in
    /// SD-XL's hub folders: with [`Padding::Eos`] as `tokenizer/`, otherwise as `tokenizer_2/`,
    /// whose pad token (`"!"` for `Id(0)`) is a special token that is split out of prompts.
    pub fn embedded(pad: Padding) -> Result<Self> {
        let source = Path::new("<embedded assets/clip/bpe_simple_vocab_16e6.txt.gz>");
        let mut text = String::new();
        flate2::read::GzDecoder::new(EMBEDDED_BPE)
            .read_to_string(&mut text)
            .map_err(|e| invalid(source, e))?;
        let merge_list: Vec<(String, String)> = text
            .split('\n')
            .skip(1)
            .take(NUM_MERGES)
            .map(|line| {
                let mut parts = line.split_whitespace();
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(a), Some(b), None) => Ok((a.to_string(), b.to_string())),
                    _ => Err(invalid(source, format!("bad merge line {line:?}"))),
                }
            })
            .collect::<Result<_>>()?;
        if merge_list.len() != NUM_MERGES {
            return Err(invalid(source, "too few merges"));
        }
        let chars: Vec<String> = bytes_to_unicode()
            .into_iter()
            .map(|(_, c)| c.to_string())
            .collect();
        let tokens = chars
            .iter()
            .cloned()
            .chain(chars.iter().map(|c| format!("{c}{EOW}")))
            .chain(merge_list.iter().map(|(a, b)| format!("{a}{b}")))
            .chain([BOS.to_string(), EOS.to_string()]);
        let vocab: HashMap<String, u32> = tokens.enumerate().map(|(i, t)| (t, i as u32)).collect();
        debug_assert_eq!(vocab.len(), VOCAB_SIZE);

        let mut added = vec![AddedToken {
            content: BOS.into(),
            id: BOS_ID,
            normalized: true,
        }];
        match pad {
            Padding::Id(id) if id != EOS_ID => {
                added.push(AddedToken {
                    content: EOS.into(),
                    id: EOS_ID,
                    normalized: false,
                });
                let content = vocab
                    .iter()
                    .find(|(_, &v)| v == id)
                    .map(|(k, _)| k.clone())
                    .ok_or_else(|| {
                        invalid(source, format!("pad id {id} is not in the vocabulary"))
                    })?;
                added.push(AddedToken {
                    content,
                    id,
                    normalized: false,
                });
            }
            _ => added.push(AddedToken {
                content: EOS.into(),
                id: EOS_ID,
                normalized: true,
            }),
        }
        Self::build(vocab, &merge_list, added, pad, source)
    }

    fn parse_vocab(v: &Value, path: &Path) -> Result<HashMap<String, u32>> {
        let obj = v
            .as_object()
            .ok_or_else(|| invalid(path, "vocabulary is not a JSON object"))?;
        obj.iter()
            .map(|(k, v)| {
                v.as_u64()
                    .and_then(|id| u32::try_from(id).ok())
                    .map(|id| (k.clone(), id))
                    .ok_or_else(|| invalid(path, format!("bad id for token {k:?}")))
            })
            .collect()
    }

    fn parse_merge_line(line: &str, path: &Path) -> Result<(String, String)> {
        let mut parts = line.split(' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), None) if !a.is_empty() && !b.is_empty() => {
                Ok((a.to_string(), b.to_string()))
            }
            _ => Err(invalid(path, format!("bad merge {line:?}"))),
        }
    }

    fn parse_merges_txt(text: &str, path: &Path) -> Result<Vec<(String, String)>> {
        text.lines()
            .enumerate()
            .filter(|(i, line)| !(line.is_empty() || (*i == 0 && line.starts_with("#version"))))
            .map(|(_, line)| Self::parse_merge_line(line, path))
            .collect()
    }

    #[allow(clippy::type_complexity)]
    fn parse_tokenizer_json(
        path: &Path,
    ) -> Result<(HashMap<String, u32>, Vec<(String, String)>, Vec<AddedToken>)> {
        let j = read_json(path)?;
        let model = j
            .get("model")
            .ok_or_else(|| invalid(path, "no \"model\""))?;
        if model.get("type").and_then(Value::as_str) != Some("BPE") {
            return Err(invalid(path, "model is not BPE"));
        }
        if model.get("end_of_word_suffix").and_then(Value::as_str) != Some(EOW) {
            return Err(invalid(
                path,
                "model.end_of_word_suffix is not \"</w>\" (not a CLIP tokenizer)",
            ));
        }
        let vocab = Self::parse_vocab(
            model
                .get("vocab")
                .ok_or_else(|| invalid(path, "no model.vocab"))?,
            path,
        )?;
        let merges = model
            .get("merges")
            .and_then(Value::as_array)
            .ok_or_else(|| invalid(path, "no model.merges"))?
            .iter()
            .map(|m| match m {
                Value::String(s) => Self::parse_merge_line(s, path),
                Value::Array(a) => match (
                    a.first().and_then(Value::as_str),
                    a.get(1).and_then(Value::as_str),
                    a.len(),
                ) {
                    (Some(x), Some(y), 2) => Ok((x.to_string(), y.to_string())),
                    _ => Err(invalid(path, format!("bad merge {m}"))),
                },
                _ => Err(invalid(path, format!("bad merge {m}"))),
            })
            .collect::<Result<_>>()?;
        let mut added = Vec::new();
        for t in j
            .get("added_tokens")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let content = t.get("content").and_then(Value::as_str);
            let id = t
                .get("id")
                .and_then(Value::as_u64)
                .and_then(|i| u32::try_from(i).ok());
            match (content, id) {
                (Some(content), Some(id)) => added.push(AddedToken {
                    content: content.to_string(),
                    id,
                    normalized: t
                        .get("normalized")
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                }),
                _ => return Err(invalid(path, format!("bad added token {t}"))),
            }
        }
        Ok((vocab, merges, added))
    }

    /// Id of a vocabulary token (e.g. `"a</w>"`), if present.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.vocab.get(token).copied()
    }

    /// Number of vocabulary entries.
    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    /// The id that pads sequences after EOS.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// BOS and EOS ids.
    pub fn bos_eos(&self) -> (u32, u32) {
        (self.bos_id, self.eos_id)
    }

    /// Normalizer: NFC, whitespace runs to one space, per-character lowercase.
    fn normalize(&self, text: &str) -> String {
        let nfc: String = text.nfc().collect();
        let spaced = self.whitespace.replace_all(&nfc, " ");
        spaced.chars().flat_map(char::to_lowercase).collect()
    }

    /// Splits `text` on occurrences of the added tokens with the given `normalized` flag
    /// (leftmost-longest): `Ok(text between tokens)` and `Err(token id)` in order.
    fn split_added<'a>(&self, text: &'a str, normalized: bool) -> Vec<Result<&'a str, u32>> {
        let mut out = Vec::new();
        let mut start = 0;
        let mut pos = 0;
        while pos < text.len() {
            let rest = &text[pos..];
            let best = self
                .added
                .iter()
                .filter(|t| t.normalized == normalized && !t.content.is_empty())
                .filter(|t| rest.starts_with(t.content.as_str()))
                .max_by_key(|t| t.content.len());
            if let Some(t) = best {
                if start < pos {
                    out.push(Ok(&text[start..pos]));
                }
                out.push(Err(t.id));
                pos += t.content.len();
                start = pos;
            } else {
                pos += rest.chars().next().map_or(1, char::len_utf8);
            }
        }
        if start < text.len() {
            out.push(Ok(&text[start..]));
        }
        out
    }

    /// BPE of one pre-tokenized word (its UTF-8 bytes), appending ids to `out`.
    fn bpe(&self, word: &[u8], out: &mut Vec<u32>) {
        let n = word.len();
        let mut syms: Vec<u32> = word
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if i + 1 == n {
                    self.byte_eow_ids[b as usize]
                } else {
                    self.byte_ids[b as usize]
                }
            })
            .collect();
        while syms.len() > 1 {
            let mut best: Option<(u32, usize, u32)> = None;
            for i in 0..syms.len() - 1 {
                if let Some(&(rank, merged)) = self.merges.get(&(syms[i], syms[i + 1])) {
                    if best.is_none_or(|(r, _, _)| rank < r) {
                        best = Some((rank, i, merged));
                    }
                }
            }
            let Some((_, i, merged)) = best else { break };
            syms[i] = merged;
            syms.remove(i + 1);
        }
        out.extend_from_slice(&syms);
    }

    /// Pre-tokenizes a normalized piece and appends its BPE ids.
    fn encode_piece(&self, piece: &str, out: &mut Vec<u32>) {
        for m in self.clip_split.find_iter(piece) {
            for w in self.byte_level_split.find_iter(m.as_str()) {
                self.bpe(w.as_str().as_bytes(), out);
            }
        }
    }

    /// The prompt's token ids, without BOS/EOS, padding or truncation.
    pub fn tokenize(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        for raw in self.split_added(text, false) {
            match raw {
                Err(id) => out.push(id),
                Ok(piece) => {
                    let norm = self.normalize(piece);
                    for part in self.split_added(&norm, true) {
                        match part {
                            Err(id) => out.push(id),
                            Ok(p) => self.encode_piece(p, &mut out),
                        }
                    }
                }
            }
        }
        out
    }

    /// BOS + up to 75 prompt tokens + EOS, padded to [`MAX_LEN`].
    pub fn encode(&self, text: &str) -> Result<Encoded> {
        let tokens = self.tokenize(text);
        let n = tokens.len();
        let kept = n.min(MAX_PROMPT_TOKENS);
        let mut ids = Vec::with_capacity(MAX_LEN);
        ids.push(self.bos_id);
        ids.extend_from_slice(&tokens[..kept]);
        ids.push(self.eos_id);
        ids.resize(MAX_LEN, self.pad_id);
        Ok(Encoded {
            ids,
            truncated: n > MAX_PROMPT_TOKENS,
            tokens_before_truncation: n,
        })
    }
}
