//! Weight files: memory-mapped safetensors (single files, diffusers folders with `.fp16`
//! variants and sharded index files), dtype conversion on upload, and a loader that collects
//! every missing, unexpected or wrongly shaped tensor into one error.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata};
use safetensors::SafeTensors;

use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::tensor::{DType, Tensor};

/// The bytes of a safetensors file: mapped from disk, or built into the binary (the demo model).
enum FileBytes {
    Mapped(Mmap),
    Static(&'static [u8]),
}

impl std::ops::Deref for FileBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            FileBytes::Mapped(m) => m,
            FileBytes::Static(s) => s,
        }
    }
}

/// One safetensors file (memory-mapped, or built into the binary) with its parsed header.
pub struct SafetensorsFile {
    path: PathBuf,
    mmap: FileBytes,
    data_start: usize,
    meta: Metadata,
}

impl SafetensorsFile {
    /// Maps and parses `path`. A truncated or corrupt file is an error naming the file.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        // SAFETY: the map is read-only; a file truncated by another process while mapped could
        // fault, as with any mmap reader (the same contract as safetensors' own loaders).
        let mmap = unsafe { Mmap::map(&file) }.map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(path, FileBytes::Mapped(mmap))
    }

    /// A file built into the binary; `name` stands for its path in errors.
    pub fn from_static(name: &str, bytes: &'static [u8]) -> Result<Self> {
        Self::parse(Path::new(name), FileBytes::Static(bytes))
    }

    fn parse(path: &Path, mmap: FileBytes) -> Result<Self> {
        let (n, meta) = SafeTensors::read_metadata(&mmap).map_err(|e| {
            Error::Invalid(format!(
                "{}: not a valid safetensors file ({e})",
                path.display()
            ))
        })?;
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            mmap,
            data_start: 8 + n,
            meta,
        })
    }

    /// Path of the file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Names of the tensors in the file.
    pub fn names(&self) -> Vec<String> {
        self.meta.offset_keys()
    }

    fn bytes(&self, name: &str) -> Option<(Dtype, &[usize], &[u8])> {
        let info = self.meta.info(name)?;
        let (a, b) = info.data_offsets;
        Some((
            info.dtype,
            &info.shape,
            &self.mmap[self.data_start + a..self.data_start + b],
        ))
    }
}

/// How a store entry is derived from the tensor stored in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transform {
    /// The tensor as stored.
    Identity,
    /// Rows `start..start + len` along the first dimension (e.g. q, k or v of OpenCLIP's
    /// fused `in_proj_weight` `[3C, C]` / `in_proj_bias` `[3C]`).
    Rows {
        /// First row taken.
        start: usize,
        /// Number of rows taken.
        len: usize,
    },
    /// The transpose of a 2-D tensor (OpenCLIP's `text_projection`, applied as `x @ P`).
    Transpose,
}

/// Where one tensor lives: a file, its key there and the transform applied on read.
#[derive(Clone, Debug)]
struct Location {
    file: usize,
    key: String,
    transform: Transform,
}

/// Applies `t` to a stored tensor's bytes (dtype-agnostic: `elem` bytes per element).
/// `shape` is the stored shape; the transform was validated when the store was built.
fn transformed<'b>(
    t: Transform,
    elem: usize,
    shape: &[usize],
    bytes: &'b [u8],
) -> (Vec<usize>, Cow<'b, [u8]>) {
    match t {
        Transform::Identity => (shape.to_vec(), Cow::Borrowed(bytes)),
        Transform::Rows { start, len } => {
            let row: usize = shape[1..].iter().product::<usize>() * elem;
            let mut s = shape.to_vec();
            s[0] = len;
            (s, Cow::Borrowed(&bytes[start * row..(start + len) * row]))
        }
        Transform::Transpose => {
            let (r, c) = (shape[0], shape[1]);
            let mut out = vec![0u8; bytes.len()];
            for i in 0..r {
                for j in 0..c {
                    let src = (i * c + j) * elem;
                    let dst = (j * r + i) * elem;
                    out[dst..dst + elem].copy_from_slice(&bytes[src..src + elem]);
                }
            }
            (vec![c, r], Cow::Owned(out))
        }
    }
}

fn check_transform(t: Transform, dt: Dtype, shape: &[usize]) -> std::result::Result<(), String> {
    if t != Transform::Identity && dt.bitsize() % 8 != 0 {
        return Err(format!("dtype {dt:?} cannot be sliced or transposed"));
    }
    match t {
        Transform::Identity => Ok(()),
        Transform::Rows { start, len } => {
            if shape.is_empty() || start + len > shape[0] {
                Err(format!(
                    "shape {shape:?} has no rows {start}..{} to split off",
                    start + len
                ))
            } else {
                Ok(())
            }
        }
        Transform::Transpose => {
            if shape.len() == 2 {
                Ok(())
            } else {
                Err(format!("shape {shape:?} is not 2-D, cannot transpose"))
            }
        }
    }
}

/// A set of weight files seen through one naming scheme (diffusers module names).
pub struct WeightStore {
    files: Vec<SafetensorsFile>,
    entries: BTreeMap<String, Location>,
}

impl WeightStore {
    /// All tensors of `files`, keyed by their own names.
    pub fn from_files(files: Vec<SafetensorsFile>) -> Result<Self> {
        Self::from_files_mapped(files, |k| Some(k.to_string()))
    }

    /// Tensors of `files` renamed by `map` (keys it maps to `None` are not part of this store,
    /// e.g. the VAE's keys when loading a UNet from a single-file checkpoint).
    pub fn from_files_mapped(
        files: Vec<SafetensorsFile>,
        map: impl Fn(&str) -> Option<String>,
    ) -> Result<Self> {
        Self::from_files_transformed(files, |k| {
            map(k)
                .map(|n| vec![(n, Transform::Identity)])
                .unwrap_or_default()
        })
    }

    /// Tensors of `files` seen through `map`, which gives every stored key the entries it
    /// provides: none (not part of this store), one renamed entry, or several derived ones
    /// (e.g. OpenCLIP's fused `in_proj_weight` split into q, k and v row slices). A transform
    /// that does not fit the stored shape is an error naming the file and key.
    pub fn from_files_transformed(
        files: Vec<SafetensorsFile>,
        map: impl Fn(&str) -> Vec<(String, Transform)>,
    ) -> Result<Self> {
        let mut entries = BTreeMap::new();
        for (i, f) in files.iter().enumerate() {
            for key in f.names() {
                for (name, transform) in map(&key) {
                    let (dt, shape, _) = f.bytes(&key).expect("listed key");
                    check_transform(transform, dt, shape).map_err(|e| {
                        Error::Invalid(format!("{}: '{key}' (for '{name}'): {e}", f.path.display()))
                    })?;
                    if let Some(prev) = entries.insert(
                        name.clone(),
                        Location {
                            file: i,
                            key: key.clone(),
                            transform,
                        },
                    ) {
                        return Err(Error::Invalid(format!(
                            "tensor '{name}' appears twice: '{}' in {} and '{key}' in {}",
                            prev.key,
                            files[prev.file].path.display(),
                            f.path.display()
                        )));
                    }
                }
            }
        }
        Ok(WeightStore { files, entries })
    }

    /// Opens a diffusers model folder's weights (`<stem>.safetensors`, its `.fp16` variant, or
    /// a sharded `<stem>.safetensors.index.json`). With both precisions present, `prefer_f16`
    /// picks the fp16 variant.
    pub fn open_diffusers(dir: &Path, stem: &str, prefer_f16: bool) -> Result<Self> {
        let variants = if prefer_f16 {
            ["fp16.", ""]
        } else {
            ["", "fp16."]
        };
        for v in variants {
            let single = dir.join(format!("{stem}.{v}safetensors"));
            if single.is_file() {
                return Self::from_files(vec![SafetensorsFile::open(&single)?]);
            }
            let index = dir.join(format!("{stem}.{v}safetensors.index.json"));
            if index.is_file() {
                return Self::open_sharded(&index);
            }
        }
        Err(Error::Invalid(format!(
            "{}: no weights found (expected {stem}.safetensors, {stem}.fp16.safetensors or a sharded {stem}.safetensors.index.json)",
            dir.display()
        )))
    }

    /// Opens the shards listed in a `*.safetensors.index.json` (`weight_map`: name -> file).
    pub fn open_sharded(index: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(index).map_err(|source| Error::Io {
            path: index.display().to_string(),
            source,
        })?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            Error::Invalid(format!("{}: invalid index json ({e})", index.display()))
        })?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| {
                Error::Invalid(format!("{}: no 'weight_map' object", index.display()))
            })?;
        let dir = index.parent().unwrap_or(Path::new("."));
        let mut shard_names: Vec<&str> = map.values().filter_map(|f| f.as_str()).collect();
        shard_names.sort();
        shard_names.dedup();
        let files = shard_names
            .iter()
            .map(|s| SafetensorsFile::open(&dir.join(s)))
            .collect::<Result<Vec<_>>>()?;
        let store = Self::from_files(files)?;
        let missing: Vec<&String> = map
            .keys()
            .filter(|k| !store.entries.contains_key(*k))
            .collect();
        if !missing.is_empty() {
            return Err(Error::Invalid(format!(
                "{}: {} tensors listed in the index are in none of the shards: {}",
                index.display(),
                missing.len(),
                list(missing.iter().map(|s| s.as_str()))
            )));
        }
        Ok(store)
    }

    /// Whether a tensor exists.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Names of all tensors.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(|s| s.as_str())
    }

    /// Shape of a tensor (after its transform).
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let loc = self.entries.get(name)?;
        let (_, s, _) = self.files[loc.file].bytes(&loc.key)?;
        Some(match loc.transform {
            Transform::Identity => s.to_vec(),
            Transform::Rows { len, .. } => {
                let mut v = s.to_vec();
                v[0] = len;
                v
            }
            Transform::Transpose => vec![s[1], s[0]],
        })
    }

    /// The stored tensor behind `loc` with its transform applied: dtype, shape and bytes.
    fn raw(&self, loc: &Location) -> (Dtype, Vec<usize>, Cow<'_, [u8]>) {
        let f = &self.files[loc.file];
        let (dt, shape, bytes) = f.bytes(&loc.key).expect("entries point at existing keys");
        let elem = (dt.bitsize() / 8).max(1);
        let (shape, bytes) = transformed(loc.transform, elem, shape, bytes);
        (dt, shape, bytes)
    }

    /// Reads a tensor as f32 on the host.
    pub fn read_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let loc = self
            .entries
            .get(name)
            .ok_or_else(|| Error::Invalid(format!("missing tensor '{name}'")))?;
        let f = &self.files[loc.file];
        let (dt, shape, bytes) = self.raw(loc);
        Ok((
            shape,
            to_f32(dt, &bytes)
                .map_err(|e| Error::Invalid(format!("{}: '{}': {e}", f.path.display(), loc.key)))?,
        ))
    }

    /// Uploads a tensor in `dtype`; with `transpose`, `[out, rest...]` is transposed on the
    /// host to `[prod(rest), out]` first (the caller reshapes).
    fn upload(
        &self,
        ctx: &GpuContext,
        name: &str,
        dtype: DType,
        transpose: bool,
    ) -> Result<Tensor> {
        let loc = &self.entries[name];
        let f = &self.files[loc.file];
        let (dt, shape, bytes) = self.raw(loc);
        let (shape, bytes) = if transpose {
            // [out, rest...] as the matrix [out, prod(rest)], transposed.
            let elem = (dt.bitsize() / 8).max(1);
            let rows = shape.first().copied().unwrap_or(1);
            let m = [rows, shape.iter().skip(1).product()];
            let (s, b) = transformed(Transform::Transpose, elem, &m, &bytes);
            (s, Cow::Owned(b.into_owned()))
        } else {
            (shape, bytes)
        };
        let what = |e: String| Error::Invalid(format!("{}: '{}': {e}", f.path.display(), loc.key));
        match (dt, dtype) {
            (Dtype::F16, DType::F16) => {
                let h: Vec<f16> = bytemuck::pod_collect_to_vec(&bytes);
                Tensor::from_f16(ctx, &h, &shape)
            }
            (_, DType::F16 | DType::F32) => {
                Tensor::from_f32(ctx, &to_f32(dt, &bytes).map_err(what)?, &shape, dtype)
            }
            (_, DType::U32) => Err(Error::Invalid("weights are uploaded as f32 or f16".into())),
        }
    }
}

fn to_f32(dt: Dtype, bytes: &[u8]) -> std::result::Result<Vec<f32>, String> {
    Ok(match dt {
        Dtype::F32 => bytemuck::pod_collect_to_vec(bytes),
        Dtype::F16 => bytemuck::pod_collect_to_vec::<u8, f16>(bytes)
            .iter()
            .map(|x| x.to_f32())
            .collect(),
        Dtype::BF16 => bytemuck::pod_collect_to_vec::<u8, bf16>(bytes)
            .iter()
            .map(|x| x.to_f32())
            .collect(),
        other => {
            return Err(format!(
                "dtype {other:?} is not a float weight type (expected F32, F16 or BF16)"
            ))
        }
    })
}

fn list<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<&str> = items.collect();
    const SHOW: usize = 20;
    if v.len() > SHOW {
        format!("{}, ... ({} more)", v[..SHOW].join(", "), v.len() - SHOW)
    } else {
        v.join(", ")
    }
}

/// A tensor a model asks for: its name and shape.
pub type ParamSpec = (String, Vec<usize>);

/// Uploads the tensors a model asks for, converting to the compute dtype, and reports all
/// problems at once in [`WeightLoader::finish`].
///
/// [`WeightLoader::get`] always returns a tensor so a model can be built to the end and every
/// problem listed; after a problem (and in planning mode, without a store) the tensor is a
/// placeholder that shares one tiny buffer. Such a model must be dropped: [`finish`] fails for a
/// loading run, and a planning run only yields the list of parameters.
///
/// [`finish`]: WeightLoader::finish
pub struct WeightLoader<'a> {
    ctx: &'a GpuContext,
    store: Option<&'a WeightStore>,
    dtype: DType,
    used: HashSet<String>,
    requested: Vec<ParamSpec>,
    missing: Vec<String>,
    wrong_shape: Vec<String>,
    failed: Option<Error>,
    placeholder: Option<Tensor>,
    /// Synthetic mode: weights are generated on the GPU from this seed.
    synthetic: Option<u32>,
}

impl<'a> WeightLoader<'a> {
    /// Loads from `store` in compute dtype `dtype`.
    pub fn new(ctx: &'a GpuContext, store: &'a WeightStore, dtype: DType) -> Self {
        Self::with_store(ctx, Some(store), dtype)
    }

    /// Planning mode: records what a model asks for and uploads nothing (parameter counts of
    /// full-size models without their weights). In a planning context
    /// ([`ContextOptions::plan_only`](crate::gpu::ContextOptions::plan_only)) each weight is
    /// "allocated" so the pool counts its bytes.
    pub fn plan(ctx: &'a GpuContext, dtype: DType) -> Self {
        Self::with_store(ctx, None, dtype)
    }

    /// Synthetic mode: every weight is generated on the GPU (nothing read or uploaded), random
    /// with the variance of a standard initialisation so activations stay in range: matrices
    /// and kernels uniform with variance 1/fan_in, biases small, norm scales 1. For benchmarks
    /// of the real shapes without a checkpoint.
    pub fn synthetic(ctx: &'a GpuContext, dtype: DType, seed: u32) -> Self {
        WeightLoader {
            synthetic: Some(seed),
            ..Self::with_store(ctx, None, dtype)
        }
    }

    /// A random weight of the model's shape `want` (fan-in from it), stored as `shape` (the
    /// same, or its transpose: same distribution, so no transpose is needed).
    fn synthetic_weight(
        &self,
        seed: u32,
        name: &str,
        want: &[usize],
        shape: &[usize],
    ) -> Result<Tensor> {
        let key = name
            .bytes()
            .fold(seed, |h, b| crate::ops::fill::mix32(h ^ b as u32));
        let (offset, scale) = if want.len() >= 2 {
            let fan_in: usize = want[1..].iter().product();
            (0.0, (3.0 / fan_in.max(1) as f32).sqrt())
        } else if name.ends_with("bias") {
            (0.0, 0.02)
        } else {
            (1.0, 0.0)
        };
        crate::ops::fill::fill_uniform(self.ctx, shape, self.dtype, key, offset, scale)
    }

    fn with_store(ctx: &'a GpuContext, store: Option<&'a WeightStore>, dtype: DType) -> Self {
        WeightLoader {
            ctx,
            store,
            dtype,
            used: HashSet::new(),
            requested: Vec::new(),
            missing: Vec::new(),
            wrong_shape: Vec::new(),
            failed: None,
            placeholder: None,
            synthetic: None,
        }
    }

    /// The compute dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The store weights are read from; `None` in planning and synthetic mode. For models that
    /// pick their names by what a file holds (the CLIP text models' `text_model.` prefix).
    pub fn store(&self) -> Option<&'a WeightStore> {
        self.store
    }

    /// Marks every tensor under `prefix` as deliberately unused (e.g. the VAE encoder when only
    /// decoding), so [`finish`](WeightLoader::finish) does not report them as unexpected.
    pub fn ignore_prefix(&mut self, prefix: &str) {
        if let Some(store) = self.store {
            self.used.extend(
                store
                    .names()
                    .filter(|n| n.starts_with(prefix))
                    .map(String::from),
            );
        }
    }

    fn placeholder(&mut self, shape: &[usize]) -> Tensor {
        if self.placeholder.is_none() {
            match Tensor::empty(self.ctx, &[1], self.dtype) {
                Ok(t) => self.placeholder = Some(t),
                Err(e) => {
                    self.failed.get_or_insert(e);
                }
            }
        }
        match &self.placeholder {
            Some(t) => t.placeholder_view(shape),
            // Only reachable when even a 4-byte allocation failed: `finish` reports it.
            None => Tensor::detached_placeholder(shape, self.dtype),
        }
    }

    /// A linear layer's weight `[out, in]`; on CPU adapters stored transposed, `[in, out]`
    /// (transposed on the host while loading; the flag says which).
    pub fn get_linear(&mut self, name: &str, out: usize, inp: usize) -> (Tensor, bool) {
        let transpose = self.ctx.is_cpu_adapter();
        (self.get_impl(name, &[out, inp], transpose), transpose)
    }

    /// The tensor `name` with shape `shape`. Shapes that differ only by trailing 1s (1x1 conv
    /// kernels stored as linear weights and back) are accepted and viewed as `shape`.
    pub fn get(&mut self, name: &str, shape: &[usize]) -> Tensor {
        self.get_impl(name, shape, false)
    }

    /// [`WeightLoader::get`]; with `transpose`, the `[out, rest...]` tensor is returned with
    /// its first dimension moved last, `[rest..., out]`.
    fn get_impl(&mut self, name: &str, want: &[usize], transpose: bool) -> Tensor {
        self.requested.push((name.to_string(), want.to_vec()));
        let transpose = transpose && want.len() >= 2;
        let stored: Vec<usize> = if transpose {
            want[1..].iter().chain(&want[..1]).copied().collect()
        } else {
            want.to_vec()
        };
        // `want`: the model's (PyTorch) shape, checked and reported; `shape`: as stored.
        let shape = stored.as_slice();
        let Some(store) = self.store else {
            if let Some(seed) = self.synthetic {
                if self.failed.is_some() {
                    return self.placeholder(shape);
                }
                return match self.synthetic_weight(seed, name, want, shape) {
                    Ok(t) => t,
                    Err(e) => {
                        self.failed = Some(e);
                        self.placeholder(shape)
                    }
                };
            }
            if self.ctx.is_plan_only() {
                // A planning context counts the weights' bytes without allocating them.
                return match Tensor::empty(self.ctx, shape, self.dtype) {
                    Ok(t) => t,
                    Err(e) => {
                        self.failed.get_or_insert(e);
                        self.placeholder(shape)
                    }
                };
            }
            return self.placeholder(shape);
        };
        if self.failed.is_some() {
            return self.placeholder(shape);
        }
        let Some(have) = store.shape(name) else {
            self.missing.push(format!("{name} {want:?}"));
            return self.placeholder(shape);
        };
        self.used.insert(name.to_string());
        let strip = |s: &[usize]| {
            let mut v = s.to_vec();
            while v.len() > 1 && *v.last().unwrap() == 1 {
                v.pop();
            }
            v
        };
        if strip(&have) != strip(want) {
            self.wrong_shape
                .push(format!("{name}: file has {have:?}, model needs {want:?}"));
            return self.placeholder(shape);
        }
        match store
            .upload(self.ctx, name, self.dtype, transpose)
            .and_then(|t| t.reshape(shape))
        {
            Ok(t) => t,
            Err(e) => {
                self.failed = Some(e);
                self.placeholder(shape)
            }
        }
    }

    /// The parameters requested. For a loading run: an error unless every requested tensor
    /// was found with the right shape and no tensor of the store was left unused.
    pub fn finish(self) -> Result<Vec<ParamSpec>> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let Some(store) = self.store else {
            return Ok(self.requested);
        };
        let unexpected: Vec<&str> = store.names().filter(|n| !self.used.contains(*n)).collect();
        if self.missing.is_empty() && self.wrong_shape.is_empty() && unexpected.is_empty() {
            return Ok(self.requested);
        }
        let mut msg = String::from("the weights do not match the model:");
        if !self.missing.is_empty() {
            msg += &format!(
                "\n  missing ({}): {}",
                self.missing.len(),
                list(self.missing.iter().map(|s| s.as_str()))
            );
        }
        if !self.wrong_shape.is_empty() {
            msg += &format!(
                "\n  wrong shape ({}): {}",
                self.wrong_shape.len(),
                list(self.wrong_shape.iter().map(|s| s.as_str()))
            );
        }
        if !unexpected.is_empty() {
            msg += &format!(
                "\n  unexpected ({}): {}",
                unexpected.len(),
                list(unexpected.into_iter())
            );
        }
        Err(Error::Invalid(msg))
    }
}

/// Host tensors by name: shape and f32 data.
pub type HostTensors = HashMap<String, (Vec<usize>, Vec<f32>)>;

/// Reads the float tensors of a safetensors file into host f32 tensors (inputs and references,
/// small files); tensors of other dtypes (integer ids) are skipped.
pub fn read_all_f32(path: &Path) -> Result<HostTensors> {
    let file = SafetensorsFile::open(path)?;
    let floats: Vec<String> = file
        .names()
        .into_iter()
        .filter(|n| {
            file.bytes(n)
                .is_some_and(|(dt, _, _)| matches!(dt, Dtype::F32 | Dtype::F16 | Dtype::BF16))
        })
        .collect();
    let store = WeightStore::from_files(vec![file])?;
    floats
        .iter()
        .map(|n| Ok((n.clone(), store.read_f32(n)?)))
        .collect()
}
