//! File output helpers: atomic writes and safetensors serialization of host tensors.

use std::io::Write;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};

use crate::error::{Error, Result};

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, synced, then
/// renamed over the target. A failure leaves no partial file at `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| Error::Io {
        path: path.display().to_string(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| Error::Invalid(format!("{}: not a file path", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

/// A host tensor to save: name, shape and f32 data, or i64 data for indices.
pub enum HostTensor<'a> {
    /// `(name, shape, values)` saved as f32.
    F32(&'a str, Vec<usize>, &'a [f32]),
    /// `(name, shape, values)` saved as i64.
    I64(&'a str, Vec<usize>, &'a [i64]),
}

/// Serializes host tensors to safetensors bytes.
pub fn safetensors_bytes(tensors: &[HostTensor]) -> Result<Vec<u8>> {
    let views = tensors
        .iter()
        .map(|t| {
            let (name, dtype, shape, data): (&str, Dtype, &Vec<usize>, &[u8]) = match t {
                HostTensor::F32(n, s, d) => (n, Dtype::F32, s, bytemuck::cast_slice(d)),
                HostTensor::I64(n, s, d) => (n, Dtype::I64, s, bytemuck::cast_slice(d)),
            };
            TensorView::new(dtype, shape.clone(), data)
                .map(|v| (name.to_string(), v))
                .map_err(|e| Error::Invalid(format!("tensor '{name}': {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::tensor::serialize(views, None)
        .map_err(|e| Error::Invalid(format!("serializing safetensors: {e}")))
}

/// Encodes 8-bit pixels (`channels` 3: RGB, 4: RGBA) as PNG, with `text` in a `parameters`
/// text chunk when not empty: `tEXt` when the text is Latin-1 (what most image tools read),
/// else `iTXt` (UTF-8), so any prompt is stored losslessly.
fn png_encode(
    width: usize,
    height: usize,
    channels: usize,
    pixels: &[u8],
    text: &str,
) -> Result<Vec<u8>> {
    if pixels.len() != width * height * channels {
        return Err(Error::Invalid(format!(
            "PNG encoding: {} bytes for {width}x{height}x{channels}",
            pixels.len()
        )));
    }
    let mut buf = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut buf, width as u32, height as u32);
        enc.set_color(if channels == 4 {
            png::ColorType::Rgba
        } else {
            png::ColorType::Rgb
        });
        enc.set_depth(png::BitDepth::Eight);
        let err = |e: png::EncodingError| Error::Invalid(format!("PNG encoding: {e}"));
        if text.chars().all(|c| (c as u32) < 256) {
            if !text.is_empty() {
                enc.add_text_chunk("parameters".into(), text.into())
                    .map_err(err)?;
            }
        } else {
            enc.add_itxt_chunk("parameters".into(), text.into())
                .map_err(err)?;
        }
        let mut w = enc.write_header().map_err(err)?;
        w.write_image_data(pixels).map_err(err)?;
        w.finish().map_err(err)?;
    }
    Ok(buf)
}

/// Encodes RGB8 pixels (row-major) as PNG with `parameters` in a `parameters` text chunk.
pub fn png_rgb8_bytes(
    width: usize,
    height: usize,
    rgb: &[u8],
    parameters: &str,
) -> Result<Vec<u8>> {
    png_encode(width, height, 3, rgb, parameters)
}

/// Encodes RGBA8 pixels (row-major) as PNG.
pub fn png_rgba8_bytes(width: usize, height: usize, rgba: &[u8]) -> Result<Vec<u8>> {
    png_encode(width, height, 4, rgba, "")
}
