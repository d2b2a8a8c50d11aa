//! Image fidelity: PSNR and SSIM of 8-bit RGB images of the same size.
//!
//! PSNR is over all three channels with peak 255. SSIM follows Wang et al. 2004 ("Image quality
//! assessment: from error visibility to structural similarity") and its reference code: on luma
//! (ITU-R BT.601, `0.299 R + 0.587 G + 0.114 B`), local statistics under an 11x11 Gaussian
//! window with sigma 1.5, `K1 = 0.01`, `K2 = 0.03`, `L = 255`, averaged over the positions where
//! the window lies inside the image ("valid"). Images smaller than the window use a window as
//! large as the image allows (odd size, same sigma), so tiny test images still get a value.

use crate::error::{Error, Result};

/// PSNR in dB of `b` against `a` (RGB8, `w*h*3` bytes each). Identical images give infinity.
pub fn psnr(a: &[u8], b: &[u8]) -> Result<f64> {
    if a.len() != b.len() || a.is_empty() {
        return Err(Error::Invalid(format!(
            "psnr: images differ in size ({} vs {} bytes) or are empty",
            a.len(),
            b.len()
        )));
    }
    let se: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| {
            let d = x as f64 - y as f64;
            d * d
        })
        .sum();
    let mse = se / a.len() as f64;
    Ok(if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    })
}

/// BT.601 luma of an RGB8 image.
fn luma(rgb: &[u8]) -> Vec<f64> {
    rgb.chunks_exact(3)
        .map(|p| 0.299 * p[0] as f64 + 0.587 * p[1] as f64 + 0.114 * p[2] as f64)
        .collect()
}

/// Normalised 1-D Gaussian of odd length `n`.
fn gaussian(n: usize, sigma: f64) -> Vec<f64> {
    let c = (n / 2) as f64;
    let g: Vec<f64> = (0..n)
        .map(|i| (-((i as f64 - c).powi(2)) / (2.0 * sigma * sigma)).exp())
        .collect();
    let s: f64 = g.iter().sum();
    g.into_iter().map(|v| v / s).collect()
}

/// Separable "valid" filtering of a `w x h` plane with `k` (rows then columns).
fn filter_valid(x: &[f64], w: usize, h: usize, k: &[f64]) -> (Vec<f64>, usize, usize) {
    let n = k.len();
    let (ow, oh) = (w + 1 - n, h + 1 - n);
    let mut rows = vec![0.0; ow * h];
    for y in 0..h {
        for ox in 0..ow {
            rows[y * ow + ox] = (0..n).map(|i| k[i] * x[y * w + ox + i]).sum();
        }
    }
    let mut out = vec![0.0; ow * oh];
    for oy in 0..oh {
        for ox in 0..ow {
            out[oy * ow + ox] = (0..n).map(|i| k[i] * rows[(oy + i) * ow + ox]).sum();
        }
    }
    (out, ow, oh)
}

/// Mean SSIM of `b` against `a` (RGB8 `w x h`), on luma; 1 for identical images.
pub fn ssim(a: &[u8], b: &[u8], w: usize, h: usize) -> Result<f64> {
    if a.len() != w * h * 3 || b.len() != w * h * 3 || w == 0 || h == 0 {
        return Err(Error::Invalid(format!(
            "ssim: expected two {w}x{h} RGB images ({} bytes), got {} and {} bytes",
            w * h * 3,
            a.len(),
            b.len()
        )));
    }
    let n = {
        let m = w.min(h).min(11);
        if m % 2 == 0 {
            m - 1
        } else {
            m
        }
    };
    let k = gaussian(n, 1.5);
    let (x, y) = (luma(a), luma(b));
    let xx: Vec<f64> = x.iter().map(|v| v * v).collect();
    let yy: Vec<f64> = y.iter().map(|v| v * v).collect();
    let xy: Vec<f64> = x.iter().zip(&y).map(|(p, q)| p * q).collect();
    let (mx, ow, oh) = filter_valid(&x, w, h, &k);
    let (my, ..) = filter_valid(&y, w, h, &k);
    let (sxx, ..) = filter_valid(&xx, w, h, &k);
    let (syy, ..) = filter_valid(&yy, w, h, &k);
    let (sxy, ..) = filter_valid(&xy, w, h, &k);
    let c1 = (0.01f64 * 255.0).powi(2);
    let c2 = (0.03f64 * 255.0).powi(2);
    let mut total = 0.0;
    for i in 0..ow * oh {
        let (ux, uy) = (mx[i], my[i]);
        let vx = sxx[i] - ux * ux;
        let vy = syy[i] - uy * uy;
        let cxy = sxy[i] - ux * uy;
        total +=
            ((2.0 * ux * uy + c1) * (2.0 * cxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2));
    }
    Ok(total / (ow * oh) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn constant(w: usize, h: usize, v: u8) -> Vec<u8> {
        vec![v; w * h * 3]
    }

    #[test]
    fn psnr_closed_form() {
        // Every byte off by 5: MSE 25, PSNR = 10 log10(65025 / 25) = 34.151 dB.
        let a = constant(7, 5, 100);
        let b = constant(7, 5, 105);
        assert!((psnr(&a, &b).unwrap() - 34.1514).abs() < 1e-3);
        assert_eq!(psnr(&a, &a).unwrap(), f64::INFINITY);
        assert!(psnr(&a, &b[..10]).is_err());
    }

    #[test]
    fn ssim_of_constant_images_is_the_luminance_term() {
        // Zero variance everywhere: SSIM = (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1).
        let (w, h) = (13, 12);
        let a = constant(w, h, 60);
        let b = constant(w, h, 90);
        let c1 = (0.01f64 * 255.0).powi(2);
        let want = (2.0 * 60.0 * 90.0 + c1) / (60.0f64.powi(2) + 90.0f64.powi(2) + c1);
        assert!((ssim(&a, &b, w, h).unwrap() - want).abs() < 1e-9);
    }

    #[test]
    fn ssim_is_one_for_identical_and_drops_with_noise_and_inversion() {
        let (w, h) = (24, 17);
        let a: Vec<u8> = (0..w * h * 3).map(|i| ((i * 37) % 251) as u8).collect();
        assert!((ssim(&a, &a, w, h).unwrap() - 1.0).abs() < 1e-12);
        let noisy: Vec<u8> = a
            .iter()
            .enumerate()
            .map(|(i, &v)| v.saturating_add(((i * 7919) % 23) as u8))
            .collect();
        let inverted: Vec<u8> = a.iter().map(|&v| 255 - v).collect();
        let s_noisy = ssim(&a, &noisy, w, h).unwrap();
        let s_inv = ssim(&a, &inverted, w, h).unwrap();
        assert!(s_noisy < 0.999 && s_noisy > s_inv, "{s_noisy} {s_inv}");
        assert!(
            s_inv < 0.0,
            "inverted structure correlates negatively: {s_inv}"
        );
        // Symmetric in its arguments.
        assert!((ssim(&noisy, &a, w, h).unwrap() - s_noisy).abs() < 1e-12);
    }

    #[test]
    fn ssim_small_images_and_bad_sizes() {
        let a = constant(4, 3, 10);
        assert!((ssim(&a, &a, 4, 3).unwrap() - 1.0).abs() < 1e-12);
        assert!(ssim(&a, &a, 5, 3).is_err());
    }
}
