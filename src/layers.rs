//! The layering check: every module of the library imports only modules of its own layer or of
//! the layers below it (`docs/architecture.md`). Run by `cargo test` (so by CI).
//!
//! Layers, lowest first: the runtime (`error`, `io`, `gpu`, `tensor`), `ops`, `nn`, `prune`,
//! `model`, `pipeline`, `bench` and `eval`, `viewer`. One exception, by design: `model::config`
//! (plain configuration data parsed from `config.json`, importing nothing but `error`) sits
//! below `prune`, whose FLOPs model and scheduler read the UNet's shape from it. The command
//! line is part of the binary (`src/main.rs`, `src/cli/`), not of the library.

use std::path::{Path, PathBuf};

/// The layer of a module path (`gpu`, `model::config`, ...): higher imports lower.
fn rank(path: &str) -> Option<u32> {
    let top = path.split("::").next().unwrap_or(path);
    if path == "model::config" || path.starts_with("model::config::") {
        return Some(25);
    }
    Some(match top {
        "error" | "io" | "gpu" | "tensor" | "shader_family" => 0,
        "ops" => 10,
        "nn" => 20,
        "prune" => 30,
        "model" => 40,
        "pipeline" => 50,
        "bench" | "eval" => 60,
        "viewer" => 70,
        // Re-exports and items of the crate root (`crate::Result`, `crate::shader_families`).
        "Error" | "Result" | "DType" | "Tensor" => 0,
        "shader_families" => 30,
        _ => return None,
    })
}

/// The module path of a source file under `src/` (`src/model/unet/mod.rs` -> `model::unet`).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src/");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts.join("::")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("reading src/") {
        let p = e.expect("a directory entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Every `crate::a::b` a line of code (not a comment) names.
fn crate_paths(line: &str) -> Vec<String> {
    let code = line.split("//").next().unwrap_or("");
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let tail = &rest[i + "crate::".len()..];
        let path: String = tail
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        out.push(path.trim_end_matches(':').to_string());
        rest = &tail[path.len()..];
    }
    out
}

/// `(file, line, importer, imported)` of every import of a higher layer under `src`.
fn upward_imports(src: &Path) -> Vec<(PathBuf, usize, String, String)> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut bad = Vec::new();
    for f in files {
        let module = module_of(src, &f);
        if ["main", "lib", "layers"].contains(&module.as_str()) || module.starts_with("cli") {
            continue;
        }
        let Some(own) = rank(&module) else {
            bad.push((
                f.clone(),
                0,
                module.clone(),
                "(a module of no layer)".into(),
            ));
            continue;
        };
        let text = std::fs::read_to_string(&f).expect("reading a source file");
        for (n, line) in text.lines().enumerate() {
            for p in crate_paths(line) {
                match rank(&p) {
                    Some(r) if r <= own => {}
                    _ => bad.push((f.clone(), n + 1, module.clone(), p)),
                }
            }
        }
    }
    bad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
    }

    #[test]
    fn modules_import_only_their_layer_and_the_layers_below() {
        let bad = upward_imports(&src());
        let list: Vec<String> = bad
            .iter()
            .map(|(f, n, m, p)| format!("{}:{n}: {m} imports crate::{p}", f.display()))
            .collect();
        assert!(list.is_empty(), "upward imports:\n{}", list.join("\n"));
    }

    #[test]
    fn the_library_has_no_command_line() {
        let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
        assert!(!lib.contains("mod cli"));
        let cargo = std::fs::read_to_string(src().join("../Cargo.toml")).unwrap();
        assert!(cargo.contains("path = \"src/main.rs\""));
    }

    #[test]
    fn the_check_catches_an_upward_import() {
        let dir = std::env::temp_dir().join(format!("atedm-layers-{}", std::process::id()));
        let ops = dir.join("ops");
        std::fs::create_dir_all(&ops).unwrap();
        std::fs::write(ops.join("fill.rs"), "use crate::prune::tome::mix32;\n").unwrap();
        std::fs::write(ops.join("mod.rs"), "// crate::model in a comment is fine\n").unwrap();
        std::fs::write(
            dir.join("model.rs"),
            "use crate::ops::fill;\nuse crate::prune::Pruning;\n",
        )
        .unwrap();
        let bad = upward_imports(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert_eq!(
            (bad[0].2.as_str(), bad[0].3.as_str()),
            ("ops::fill", "prune::tome::mix32")
        );
    }
}
