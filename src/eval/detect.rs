//! Prompt adherence for the demo model's shapes world: does an image show what its caption says?
//!
//! The caption names one or more objects, each a size, a colour, a shape and a position
//! ("a large red circle at the top left and a small blue square at the bottom right"). The
//! detector:
//! 1. marks object pixels: saturation >= 0.35 and value >= 0.3 (the palette's colours are
//!    saturated, the background is dark);
//! 2. splits them into 4-connected regions and drops specks (under a third of the smallest
//!    object's area);
//! 3. gives each region the palette colour nearest (on the hue circle) to the region's
//!    saturation-weighted circular mean hue, so anti-aliased or hue-shifted edges do not split an
//!    object into colours;
//! 4. matches the caption's objects of each colour to that colour's largest regions, by position;
//! 5. reads from each matched region its position (the named position nearest to the centroid),
//!    size (the named half-extent nearest, in log scale, to half the longer side of the bounding
//!    box) and shape: the shape whose ideal silhouette is nearest in three features of the
//!    bounding box, the filled share of its two top corner boxes, of its two bottom corner boxes
//!    (each 30% of the box's side) and of the whole box. Ideal values, computed from the shapes'
//!    geometry at [`ideal_features`]: square (1, 1, 1), circle (0.45, 0.45, 0.785), upright
//!    triangle (0, 0.75, 0.5).
//!
//! A caption object whose colour has no region is missing (all its attributes count as wrong).
//! Regions left over (no caption object of their colour, or more regions than objects) are
//! extra objects.

use crate::error::{Error, Result};
use crate::eval::spec::{DemoSpec, SceneObject};

/// What the detector read for one caption object.
#[derive(Clone, Debug, PartialEq)]
pub struct ObjectCheck {
    /// The caption object, as parsed.
    pub object: SceneObject,
    /// A region of the object's colour was found.
    pub color: bool,
    /// The region's named position is the caption's.
    pub position: bool,
    /// The region's named size is the caption's.
    pub size: bool,
    /// The region's shape is the caption's.
    pub shape: bool,
    /// What was read: (position, size, shape) names, when a region was found.
    pub read: Option<(String, String, String)>,
}

impl ObjectCheck {
    /// Every attribute right.
    pub fn all(&self) -> bool {
        self.color && self.position && self.size && self.shape
    }
}

/// The detector's verdict on one image.
#[derive(Clone, Debug, PartialEq)]
pub struct Adherence {
    /// One check per caption object, in caption order.
    pub objects: Vec<ObjectCheck>,
    /// Regions that no caption object accounts for.
    pub extra: usize,
}

impl Adherence {
    /// The image shows exactly the caption: every attribute of every object, nothing else.
    pub fn exact(&self) -> bool {
        self.extra == 0 && self.objects.iter().all(ObjectCheck::all)
    }

    /// Every caption object's colour was found.
    pub fn all_colors_found(&self) -> bool {
        self.objects.iter().all(|o| o.color)
    }
}

/// A 4-connected region of one palette colour.
#[derive(Clone, Debug)]
struct Region {
    area: usize,
    cx: f64,
    cy: f64,
    x0: usize,
    y0: usize,
    x1: usize,
    y1: usize,
}

/// Hue (degrees), saturation and value (0..1) of an RGB8 pixel.
fn hsv(p: &[u8]) -> (f64, f64, f64) {
    let (r, g, b) = (
        p[0] as f64 / 255.0,
        p[1] as f64 / 255.0,
        p[2] as f64 / 255.0,
    );
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let d = max - min;
    let h = if d == 0.0 {
        0.0
    } else if max == r {
        60.0 * ((g - b) / d).rem_euclid(6.0)
    } else if max == g {
        60.0 * ((b - r) / d + 2.0)
    } else {
        60.0 * ((r - g) / d + 4.0)
    };
    let s = if max == 0.0 { 0.0 } else { d / max };
    (h, s, max)
}

fn hue_distance(a: f64, b: f64) -> f64 {
    let d = (a - b).rem_euclid(360.0);
    d.min(360.0 - d)
}

/// Minimum saturation and value of a pixel that belongs to an object.
const MIN_SATURATION: f64 = 0.35;
const MIN_VALUE: f64 = 0.3;

/// Object pixels of an RGB8 image: saturated and bright enough.
fn object_mask(rgb: &[u8]) -> Vec<bool> {
    rgb.chunks_exact(3)
        .map(|p| {
            let (_, s, v) = hsv(p);
            s >= MIN_SATURATION && v >= MIN_VALUE
        })
        .collect()
}

/// The 4-connected regions of `mask` with their pixel lists.
fn regions(mask: &[bool], w: usize, h: usize) -> Vec<(Region, Vec<usize>)> {
    let mut out = Vec::new();
    let mut seen = vec![false; w * h];
    let mut stack = Vec::new();
    for start in 0..w * h {
        if !mask[start] || seen[start] {
            continue;
        }
        seen[start] = true;
        stack.push(start);
        let mut px = Vec::new();
        let mut r = Region {
            area: 0,
            cx: 0.0,
            cy: 0.0,
            x0: usize::MAX,
            y0: usize::MAX,
            x1: 0,
            y1: 0,
        };
        while let Some(i) = stack.pop() {
            px.push(i);
            let (x, y) = (i % w, i / w);
            r.area += 1;
            r.cx += x as f64 + 0.5;
            r.cy += y as f64 + 0.5;
            r.x0 = r.x0.min(x);
            r.y0 = r.y0.min(y);
            r.x1 = r.x1.max(x);
            r.y1 = r.y1.max(y);
            let mut push = |j: usize| {
                if mask[j] && !seen[j] {
                    seen[j] = true;
                    stack.push(j);
                }
            };
            if x > 0 {
                push(i - 1);
            }
            if x + 1 < w {
                push(i + 1);
            }
            if y > 0 {
                push(i - w);
            }
            if y + 1 < h {
                push(i + w);
            }
        }
        r.cx /= r.area as f64;
        r.cy /= r.area as f64;
        out.push((r, px));
    }
    out
}

/// The palette colour nearest to the saturation-weighted circular mean hue of `px`.
fn region_color(spec: &DemoSpec, rgb: &[u8], px: &[usize]) -> usize {
    let (mut sx, mut sy) = (0.0, 0.0);
    for &i in px {
        let (h, s, _) = hsv(&rgb[3 * i..3 * i + 3]);
        let t = h.to_radians();
        sx += s * t.cos();
        sy += s * t.sin();
    }
    let mean = sy.atan2(sx).to_degrees().rem_euclid(360.0);
    nearest(
        spec.colors
            .iter()
            .map(|c| hue_distance(mean, hsv(&c.rgb).0)),
    )
}

/// Corner box side as a share of the bounding box side.
const CORNER: f64 = 0.3;

/// (top corners, bottom corners, whole box) filled shares of a silhouette given as a predicate
/// over its bounding box `[0,1]^2` (y down).
fn features_of(inside: impl Fn(f64, f64) -> bool, n: usize) -> [f64; 3] {
    let (mut top, mut bottom, mut all, mut corner_px) = (0usize, 0usize, 0usize, 0usize);
    for j in 0..n {
        for i in 0..n {
            let (u, v) = ((i as f64 + 0.5) / n as f64, (j as f64 + 0.5) / n as f64);
            let hit = inside(u, v);
            all += hit as usize;
            let side = !(CORNER..=1.0 - CORNER).contains(&u);
            if side && v < CORNER {
                top += hit as usize;
                corner_px += 1;
            } else if side && v > 1.0 - CORNER {
                bottom += hit as usize;
            }
        }
    }
    [
        top as f64 / corner_px as f64,
        bottom as f64 / corner_px as f64,
        all as f64 / (n * n) as f64,
    ]
}

/// The ideal features of a shape of the dataset (the geometry of `tools/train_demo.py`: a disc,
/// an axis-aligned square, an isosceles triangle with its apex at the top centre and its base
/// along the bottom), each filling its bounding box edge to edge.
pub fn ideal_features(shape: &str) -> Option<[f64; 3]> {
    let n = 200;
    match shape {
        "square" => Some(features_of(|_, _| true, n)),
        "circle" => Some(features_of(
            |u, v| (u - 0.5).powi(2) + (v - 0.5).powi(2) <= 0.25,
            n,
        )),
        "triangle" => Some(features_of(|u, v| (u - 0.5).abs() <= v / 2.0, n)),
        _ => None,
    }
}

/// The measured features of a region.
fn region_features(r: &Region, px: &[usize], w: usize) -> [f64; 3] {
    let (bw, bh) = ((r.x1 + 1 - r.x0) as f64, (r.y1 + 1 - r.y0) as f64);
    let inside: std::collections::HashSet<usize> = px.iter().copied().collect();
    let n = 64;
    features_of(
        |u, v| {
            let x = r.x0 + ((u * bw) as usize).min(r.x1 - r.x0);
            let y = r.y0 + ((v * bh) as usize).min(r.y1 - r.y0);
            inside.contains(&(y * w + x))
        },
        n,
    )
}

/// Reads (position, size, shape) indices of a region in a `w x h` image.
fn read_region(
    spec: &DemoSpec,
    r: &Region,
    px: &[usize],
    w: usize,
    h: usize,
) -> (usize, usize, usize) {
    let (u, v) = (r.cx / w as f64, r.cy / h as f64);
    let position = nearest(spec.positions.iter().map(|p| {
        let (du, dv) = (p.center[0] - u, p.center[1] - v);
        du * du + dv * dv
    }));
    // Sizes are in pixels of the training images; scale to this image.
    let scale = w.min(h) as f64 / spec.image_size as f64;
    let (bw, bh) = ((r.x1 + 1 - r.x0) as f64, (r.y1 + 1 - r.y0) as f64);
    let half = bw.max(bh) / 2.0;
    let size = nearest(
        spec.sizes
            .iter()
            .map(|s| (half / (s.half_extent * scale)).ln().abs()),
    );
    let f = region_features(r, px, w);
    let shape = nearest(spec.shapes.iter().map(|s| {
        let g = s.features();
        (0..3).map(|k| (f[k] - g[k]).powi(2)).sum::<f64>()
    }));
    (position, size, shape)
}

fn nearest(it: impl Iterator<Item = f64>) -> usize {
    it.enumerate()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(i, _)| i)
        .unwrap_or(0)
}

/// Checks an RGB8 `w x h` image against `caption`.
pub fn check(spec: &DemoSpec, caption: &str, rgb: &[u8], w: usize, h: usize) -> Result<Adherence> {
    if rgb.len() != w * h * 3 {
        return Err(Error::Invalid(format!(
            "detector: expected a {w}x{h} RGB image ({} bytes), got {} bytes",
            w * h * 3,
            rgb.len()
        )));
    }
    let objects = spec.parse_caption(caption)?;
    // Regions smaller than a third of the smallest object's area are specks (edges, noise).
    let scale = w.min(h) as f64 / spec.image_size as f64;
    let min_half = spec
        .sizes
        .iter()
        .map(|s| s.half_extent)
        .fold(f64::INFINITY, f64::min)
        * scale;
    let min_area = (0.5 * (2.0 * min_half).powi(2) / 3.0).max(4.0) as usize;
    let mut by_color: Vec<Vec<(Region, Vec<usize>)>> = vec![Vec::new(); spec.colors.len()];
    for (r, px) in regions(&object_mask(rgb), w, h) {
        if r.area >= min_area {
            let c = region_color(spec, rgb, &px);
            by_color[c].push((r, px));
        }
    }
    let mut checks: Vec<Option<ObjectCheck>> = vec![None; objects.len()];
    let mut extra = 0;
    for (c, regs) in by_color.iter_mut().enumerate() {
        regs.sort_by_key(|r| std::cmp::Reverse(r.0.area));
        let want: Vec<usize> = (0..objects.len())
            .filter(|&i| objects[i].color == spec.colors[c].name)
            .collect();
        extra += regs.len().saturating_sub(want.len());
        let found = &regs[..regs.len().min(want.len())];
        // Assign the found regions to this colour's objects by their named positions, trying
        // every order (a colour appears at most a few times in a caption).
        let mut best: Option<(f64, Vec<usize>)> = None;
        for perm in permutations(want.len()) {
            let cost: f64 = found
                .iter()
                .zip(&perm)
                .map(|((r, _), &k)| {
                    let p = spec.position_center(&objects[want[k]].position);
                    let (du, dv) = (p[0] - r.cx / w as f64, p[1] - r.cy / h as f64);
                    du * du + dv * dv
                })
                .sum();
            if best.as_ref().is_none_or(|b| cost < b.0) {
                best = Some((cost, perm));
            }
        }
        let perm = best.map(|b| b.1).unwrap_or_default();
        for ((r, px), &k) in found.iter().zip(&perm) {
            let o = &objects[want[k]];
            let (p, s, sh) = read_region(spec, r, px, w, h);
            let read = (
                spec.positions[p].name.clone(),
                spec.sizes[s].name.clone(),
                spec.shapes[sh].name.clone(),
            );
            checks[want[k]] = Some(ObjectCheck {
                object: o.clone(),
                color: true,
                position: read.0 == o.position,
                size: read.1 == o.size,
                shape: read.2 == o.shape,
                read: Some(read),
            });
        }
    }
    let objects = objects
        .into_iter()
        .zip(checks)
        .map(|(o, c)| {
            c.unwrap_or(ObjectCheck {
                object: o,
                color: false,
                position: false,
                size: false,
                shape: false,
                read: None,
            })
        })
        .collect();
    Ok(Adherence { objects, extra })
}

/// All orderings of `0..n` (n is small: objects of one colour in one caption).
fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![Vec::new()];
    }
    let mut out = Vec::new();
    for p in permutations(n - 1) {
        for i in 0..=p.len() {
            let mut q = p.clone();
            q.insert(i, n - 1);
            out.push(q);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hsv_of_primaries() {
        assert_eq!(hsv(&[255, 0, 0]), (0.0, 1.0, 1.0));
        assert_eq!(hsv(&[0, 255, 0]).0, 120.0);
        assert_eq!(hsv(&[0, 0, 255]).0, 240.0);
        assert_eq!(hsv(&[0, 0, 0]), (0.0, 0.0, 0.0));
        assert!((hue_distance(350.0, 10.0) - 20.0).abs() < 1e-12);
    }

    #[test]
    fn ideal_shape_features() {
        let near = |a: [f64; 3], b: [f64; 3]| (0..3).all(|k| (a[k] - b[k]).abs() < 0.02);
        assert!(near(ideal_features("square").unwrap(), [1.0, 1.0, 1.0]));
        let c = ideal_features("circle").unwrap();
        assert!(near(c, [c[0], c[0], std::f64::consts::FRAC_PI_4]), "{c:?}");
        assert!((c[0] - 0.45).abs() < 0.03, "{c:?}");
        let t = ideal_features("triangle").unwrap();
        assert!(near(t, [0.0, 0.75, 0.5]), "{t:?}");
        assert!(ideal_features("hexagon").is_none());
    }

    #[test]
    fn permutations_are_complete() {
        let mut p = permutations(3);
        p.sort();
        assert_eq!(p.len(), 6);
        p.dedup();
        assert_eq!(p.len(), 6);
    }
}
