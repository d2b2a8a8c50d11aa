//! The demo model's dataset definition (`atedm_demo.json`, written by `tools/train_demo.py`):
//! palette, shapes, sizes, named positions, the caption grammar and the held-back captions.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::error::{Error, Result};

/// A palette colour.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedColor {
    /// The colour's caption word ("red").
    pub name: String,
    /// The colour the dataset paints with, RGB8.
    pub rgb: [u8; 3],
}

/// A named position: the centre of a grid cell in `[0, 1]` image coordinates (x right, y down).
#[derive(Clone, Debug, PartialEq)]
pub struct NamedPosition {
    /// The position's caption words ("top left").
    pub name: String,
    /// `[x, y]` of the cell centre, in `[0, 1]`.
    pub center: [f64; 2],
}

/// A named size: the half-extent in pixels of a `image_size` image (a circle's radius, half a
/// square's side, half a triangle's width and height).
#[derive(Clone, Debug, PartialEq)]
pub struct NamedSize {
    /// The size's caption word ("large").
    pub name: String,
    /// Half-extent in pixels of an `image_size` image.
    pub half_extent: f64,
}

/// A shape the detector knows.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedShape {
    /// The shape's caption word ("circle", "square" or "triangle").
    pub name: String,
    features: [f64; 3],
}

impl NamedShape {
    /// The ideal silhouette's features ([`crate::eval::detect::ideal_features`]).
    pub fn features(&self) -> [f64; 3] {
        self.features
    }
}

/// One object of a caption.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SceneObject {
    /// A [`NamedSize`] name.
    pub size: String,
    /// A [`NamedColor`] name.
    pub color: String,
    /// A [`NamedShape`] name.
    pub shape: String,
    /// A [`NamedPosition`] name (may be several words).
    pub position: String,
}

/// The dataset definition.
#[derive(Clone, Debug)]
pub struct DemoSpec {
    /// Side in pixels of the square training images (the unit of [`NamedSize::half_extent`]).
    pub image_size: usize,
    /// Background colour, RGB8.
    pub background: [u8; 3],
    /// The palette, sorted by name; each a saturated hue.
    pub colors: Vec<NamedColor>,
    /// The named positions, sorted by name.
    pub positions: Vec<NamedPosition>,
    /// The named sizes, sorted by name.
    pub sizes: Vec<NamedSize>,
    /// The shapes, in the definition's order.
    pub shapes: Vec<NamedShape>,
    /// Held-back captions with one shape (never seen in training).
    pub held_back_one: Vec<String>,
    /// Held-back captions with two shapes (never seen in training).
    pub held_back_two: Vec<String>,
}

#[derive(Deserialize)]
struct RawSpec {
    image_size: usize,
    background_rgb: [u8; 3],
    palette_rgb: BTreeMap<String, [u8; 3]>,
    shapes: Vec<String>,
    sizes_half_px: BTreeMap<String, f64>,
    positions_xy: BTreeMap<String, [f64; 2]>,
    #[serde(default)]
    held_back_one_shape: Vec<String>,
    #[serde(default)]
    held_back_two_shapes: Vec<String>,
}

impl DemoSpec {
    /// Parses an `atedm_demo.json` text; `what` names it in errors.
    pub fn from_json(text: &str, what: &str) -> Result<Self> {
        let raw: RawSpec = serde_json::from_str(text)
            .map_err(|e| Error::Invalid(format!("{what}: not a demo dataset definition ({e})")))?;
        let shapes = raw
            .shapes
            .iter()
            .map(|s| {
                let features = crate::eval::detect::ideal_features(s).ok_or_else(|| {
                    Error::Invalid(format!(
                        "{what}: the detector knows circle, square and triangle, not '{s}'"
                    ))
                })?;
                Ok(NamedShape {
                    name: s.clone(),
                    features,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let colors: Vec<NamedColor> = raw
            .palette_rgb
            .into_iter()
            .map(|(name, rgb)| NamedColor { name, rgb })
            .collect();
        for c in &colors {
            let max = *c.rgb.iter().max().unwrap() as f64;
            let min = *c.rgb.iter().min().unwrap() as f64;
            if max < 128.0 || (max - min) / max < 0.5 {
                return Err(Error::Invalid(format!(
                    "{what}: palette colour '{}' {:?} is not a saturated hue; the detector segments by hue",
                    c.name, c.rgb
                )));
            }
        }
        if raw.image_size == 0 || colors.is_empty() || raw.sizes_half_px.is_empty() {
            return Err(Error::Invalid(format!(
                "{what}: empty image size, palette or sizes"
            )));
        }
        if raw.positions_xy.is_empty() || shapes.is_empty() {
            return Err(Error::Invalid(format!("{what}: no positions or shapes")));
        }
        let spec = DemoSpec {
            image_size: raw.image_size,
            background: raw.background_rgb,
            colors,
            positions: raw
                .positions_xy
                .into_iter()
                .map(|(name, center)| NamedPosition { name, center })
                .collect(),
            sizes: raw
                .sizes_half_px
                .into_iter()
                .map(|(name, half_extent)| NamedSize { name, half_extent })
                .collect(),
            shapes,
            held_back_one: raw.held_back_one_shape,
            held_back_two: raw.held_back_two_shapes,
        };
        for c in spec.held_back_one.iter().chain(&spec.held_back_two) {
            spec.parse_caption(c)
                .map_err(|e| Error::Invalid(format!("{what}: held-back caption: {e}")))?;
        }
        Ok(spec)
    }

    /// The centre of a named position.
    pub fn position_center(&self, name: &str) -> [f64; 2] {
        self.positions
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.center)
            .unwrap_or([0.5, 0.5])
    }

    /// Parses a caption of the grammar `a {size} {colour} {shape} at the {position}`, objects
    /// joined by ` and `. Anything else is an error naming the part that does not parse.
    pub fn parse_caption(&self, caption: &str) -> Result<Vec<SceneObject>> {
        let bad = |part: &str, why: &str| {
            Error::Invalid(format!(
                "caption {caption:?}: {why} in {part:?} (expected \"a SIZE COLOUR SHAPE at the POSITION\", objects joined by \" and \")"
            ))
        };
        let mut out = Vec::new();
        for part in caption.trim().split(" and ") {
            let words: Vec<&str> = part.split_whitespace().collect();
            if words.len() < 7 || words[0] != "a" || words[4] != "at" || words[5] != "the" {
                return Err(bad(part, "unexpected wording"));
            }
            let position = words[6..].join(" ");
            if !self.sizes.iter().any(|s| s.name == words[1]) {
                return Err(bad(part, "unknown size"));
            }
            if !self.colors.iter().any(|c| c.name == words[2]) {
                return Err(bad(part, "unknown colour"));
            }
            if !self.shapes.iter().any(|s| s.name == words[3]) {
                return Err(bad(part, "unknown shape"));
            }
            if !self.positions.iter().any(|p| p.name == position) {
                return Err(bad(part, "unknown position"));
            }
            out.push(SceneObject {
                size: words[1].into(),
                color: words[2].into(),
                shape: words[3].into(),
                position,
            });
        }
        Ok(out)
    }
}

/// The built-in demo model's dataset definition: palette, shapes, positions, held-back captions.
pub fn demo_spec() -> Result<DemoSpec> {
    DemoSpec::from_json(
        crate::model::demo::SPEC_JSON,
        &crate::model::demo::label("atedm_demo.json"),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn demo_default_steps_are_the_training_sample_steps() {
        let v: serde_json::Value = serde_json::from_str(crate::model::demo::SPEC_JSON).unwrap();
        let steps = v["training"]["hyperparameters"]["sample_steps"]
            .as_u64()
            .unwrap();
        assert_eq!(crate::model::demo::DEFAULT_STEPS as u64, steps);
        super::demo_spec().unwrap();
    }
}
