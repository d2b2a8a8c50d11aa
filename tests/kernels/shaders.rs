//! Every WGSL family parses and validates with naga, in its f32 and f16 variants.

use atedm::DType;

#[test]
fn all_shaders_validate_with_naga() {
    let families = atedm::shader_families();
    assert!(!families.is_empty());
    for fam in families {
        for dtype in [DType::F32, DType::F16] {
            let src = fam.source_for(dtype);
            let module = naga::front::wgsl::parse_str(&src)
                .unwrap_or_else(|e| panic!("{} ({dtype}): {}", fam.name, e.emit_to_string(&src)));
            let mut v = naga::valid::Validator::new(
                naga::valid::ValidationFlags::all(),
                naga::valid::Capabilities::SHADER_FLOAT16,
            );
            v.validate(&module)
                .unwrap_or_else(|e| panic!("{} ({dtype}): {}", fam.name, e.emit_to_string(&src)));
        }
    }
}

#[test]
fn shader_families_have_unique_names_and_files() {
    let families = atedm::shader_families();
    let mut names: Vec<_> = families.iter().map(|f| f.name).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), families.len(), "duplicate family names");
    // Every .wgsl file in shaders/ is registered (none is dead or forgotten).
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/shaders");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "wgsl") {
            let stem = path.file_stem().unwrap().to_str().unwrap().to_string();
            assert!(
                names.contains(&stem.as_str()),
                "shaders/{stem}.wgsl is not in atedm::shader_families()"
            );
        }
    }
}
