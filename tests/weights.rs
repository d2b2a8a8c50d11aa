//! Weight files: the diffusers layouts (single, fp16 variant, sharded) and the single-file
//! layout of the fixtures name the same tensors; corrupt files and mismatches are clear errors.

use std::path::{Path, PathBuf};

use atedm::model::config::UNetConfig;
use atedm::model::keymap::UNetKeyMap;
use atedm::model::weights::{SafetensorsFile, WeightStore};

fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/unet").join(p)
}

fn names(store: &WeightStore) -> Vec<String> {
    store.names().map(String::from).collect()
}

#[test]
fn single_file_keys_map_onto_diffusers_keys() {
    for model in ["tiny-a", "tiny-b"] {
        let cfg = UNetConfig::from_file(&fixture(&format!("{model}/unet"))).unwrap();
        let diffusers = WeightStore::open_diffusers(&fixture(&format!("{model}/unet")), "diffusion_pytorch_model", false).unwrap();
        let map = UNetKeyMap::new(&cfg);
        let single = WeightStore::from_files_mapped(
            vec![SafetensorsFile::open(&fixture(&format!("{model}/single.safetensors"))).unwrap()],
            |k| map.map_checkpoint_key(k),
        )
        .unwrap();
        assert_eq!(names(&single), names(&diffusers), "{model}");
        for n in diffusers.names() {
            let (sa, a) = diffusers.read_f32(n).unwrap();
            let (sb, b) = single.read_f32(n).unwrap();
            let sq = |s: &[usize]| s.iter().copied().filter(|&d| d != 1).collect::<Vec<_>>();
            assert_eq!(sq(&sa), sq(&sb), "{model} {n}");
            // tiny-a's single file is stored in f16: compare after rounding.
            let tol = |x: f32| x.abs() * 1e-3 + 1e-6;
            assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() <= tol(*x)), "{model} {n}");
        }
    }
}

#[test]
fn fp16_variant_and_shards_hold_the_same_tensors() {
    let dir = fixture("tiny-a");
    let f32s = WeightStore::open_diffusers(&dir.join("unet"), "diffusion_pytorch_model", false).unwrap();
    let f16s = WeightStore::open_diffusers(&dir.join("unet_fp16"), "diffusion_pytorch_model", true).unwrap();
    let shards = WeightStore::open_diffusers(&dir.join("unet_sharded"), "diffusion_pytorch_model", false).unwrap();
    assert_eq!(names(&f32s), names(&f16s));
    assert_eq!(names(&f32s), names(&shards));
    let n = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight";
    assert_eq!(f32s.read_f32(n).unwrap(), shards.read_f32(n).unwrap());
}

#[test]
fn corrupt_and_missing_files_are_clear_errors() {
    let dir = std::env::temp_dir().join(format!("atedm-weights-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = std::fs::read(fixture("tiny-b/single.safetensors")).unwrap();
    let truncated = dir.join("truncated.safetensors");
    std::fs::write(&truncated, &good[..good.len() - 100]).unwrap();
    let msg = SafetensorsFile::open(&truncated).err().unwrap().to_string();
    assert!(msg.contains("truncated.safetensors") && msg.contains("not a valid safetensors"), "{msg}");
    let garbage = dir.join("garbage.safetensors");
    std::fs::write(&garbage, b"\xff\xff\xff\xff\xff\xff\xff\x7fhello").unwrap();
    assert!(SafetensorsFile::open(&garbage).is_err());
    let tiny = dir.join("tiny.safetensors");
    std::fs::write(&tiny, b"abc").unwrap();
    assert!(SafetensorsFile::open(&tiny).is_err());
    let msg = SafetensorsFile::open(&dir.join("nope.safetensors")).err().unwrap().to_string();
    assert!(msg.contains("nope.safetensors"), "{msg}");
    let msg = WeightStore::open_diffusers(&dir, "diffusion_pytorch_model", false).err().unwrap().to_string();
    assert!(msg.contains("no weights found"), "{msg}");
    std::fs::remove_dir_all(&dir).unwrap();
}
