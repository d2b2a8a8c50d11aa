//! Weight files: the diffusers layouts (single, fp16 variant, sharded) and the single-file
//! layout of the fixtures name the same tensors; corrupt files and mismatches are clear errors.

use std::path::{Path, PathBuf};

use atedm::model::config::UNetConfig;
use atedm::model::keymap::UNetKeyMap;
use atedm::model::weights::{SafetensorsFile, WeightStore};

fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/unet")
        .join(p)
}

fn names(store: &WeightStore) -> Vec<String> {
    store.names().map(String::from).collect()
}

#[test]
fn single_file_keys_map_onto_diffusers_keys() {
    for model in ["tiny-a", "tiny-b"] {
        let cfg = UNetConfig::from_file(&fixture(&format!("{model}/unet"))).unwrap();
        let diffusers = WeightStore::open_diffusers(
            &fixture(&format!("{model}/unet")),
            "diffusion_pytorch_model",
            false,
        )
        .unwrap();
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
            assert!(
                a.iter().zip(&b).all(|(x, y)| (x - y).abs() <= tol(*x)),
                "{model} {n}"
            );
        }
    }
}

#[test]
fn fp16_variant_and_shards_hold_the_same_tensors() {
    let dir = fixture("tiny-a");
    let f32s =
        WeightStore::open_diffusers(&dir.join("unet"), "diffusion_pytorch_model", false).unwrap();
    let f16s = WeightStore::open_diffusers(&dir.join("unet_fp16"), "diffusion_pytorch_model", true)
        .unwrap();
    let shards =
        WeightStore::open_diffusers(&dir.join("unet_sharded"), "diffusion_pytorch_model", false)
            .unwrap();
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
    assert!(
        msg.contains("truncated.safetensors") && msg.contains("not a valid safetensors"),
        "{msg}"
    );
    let garbage = dir.join("garbage.safetensors");
    std::fs::write(&garbage, b"\xff\xff\xff\xff\xff\xff\xff\x7fhello").unwrap();
    assert!(SafetensorsFile::open(&garbage).is_err());
    let tiny = dir.join("tiny.safetensors");
    std::fs::write(&tiny, b"abc").unwrap();
    assert!(SafetensorsFile::open(&tiny).is_err());
    let msg = SafetensorsFile::open(&dir.join("nope.safetensors"))
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("nope.safetensors"), "{msg}");
    let msg = WeightStore::open_diffusers(&dir, "diffusion_pytorch_model", false)
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("no weights found"), "{msg}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bf16_f16_f32_sources_convert_to_the_compute_dtype() {
    let c = crate::common::ctx();
    use atedm::model::weights::WeightLoader;
    use atedm::DType;
    use half::{bf16, f16};
    use safetensors::tensor::{Dtype, TensorView};
    let vals: Vec<f32> = (0..10).map(|i| i as f32 * 0.37 - 1.5).collect();
    let b: Vec<bf16> = vals.iter().map(|&v| bf16::from_f32(v)).collect();
    let h: Vec<f16> = vals.iter().map(|&v| f16::from_f32(v)).collect();
    let (bb, hb, fb): (&[u8], &[u8], &[u8]) = (
        bytemuck::cast_slice(&b),
        bytemuck::cast_slice(&h),
        bytemuck::cast_slice(&vals),
    );
    let views = vec![
        (
            "w_bf16".to_string(),
            TensorView::new(Dtype::BF16, vec![2, 5], bb).unwrap(),
        ),
        (
            "w_f16".to_string(),
            TensorView::new(Dtype::F16, vec![2, 5], hb).unwrap(),
        ),
        (
            "w_f32".to_string(),
            TensorView::new(Dtype::F32, vec![2, 5], fb).unwrap(),
        ),
    ];
    let bytes = safetensors::tensor::serialize(views, None).unwrap();
    let path =
        std::env::temp_dir().join(format!("atedm-dtypes-{}.safetensors", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    let store = WeightStore::from_files(vec![SafetensorsFile::open(&path).unwrap()]).unwrap();
    for dtype in [DType::F32, DType::F16] {
        let mut l = WeightLoader::new(c, &store, dtype);
        let got: Vec<Vec<f32>> = ["w_bf16", "w_f16", "w_f32"]
            .iter()
            .map(|n| l.get(n, &[2, 5]).to_f32_vec(c).unwrap())
            .collect();
        l.finish().unwrap();
        let round = |v: f32| {
            if dtype == DType::F16 {
                f16::from_f32(v).to_f32()
            } else {
                v
            }
        };
        let want_b: Vec<f32> = b.iter().map(|x| round(x.to_f32())).collect();
        let want_h: Vec<f32> = h.iter().map(|x| x.to_f32()).collect();
        let want_f: Vec<f32> = vals.iter().map(|&x| round(x)).collect();
        assert_eq!(got[0], want_b, "bf16 -> {dtype}");
        assert_eq!(got[1], want_h, "f16 -> {dtype}");
        assert_eq!(got[2], want_f, "f32 -> {dtype}");
    }
    // A wrong shape and a missing name are reported together.
    let mut l = WeightLoader::new(c, &store, DType::F32);
    let _ = l.get("w_f32", &[5, 2]);
    let _ = l.get("nope", &[3]);
    let msg = l.finish().unwrap_err().to_string();
    assert!(
        msg.contains("missing (1): nope [3]")
            && msg.contains("w_f32: file has [2, 5]")
            && msg.contains("unexpected (2)"),
        "{msg}"
    );
    std::fs::remove_file(&path).unwrap();
}
