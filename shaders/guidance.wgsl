// Classifier-free guidance on the UNet output of a batch [uncond (B images), cond (B images)]:
// cfg = u + g * (c - u), optionally rescaled (guidance_rescale phi, diffusers' rescale_noise_cfg):
// out = phi * cfg * std(c) / std(cfg) + (1 - phi) * cfg, std over each image (unbiased).

struct GuidanceParams {
    n: u32,        // elements per image
    images: u32,   // B (output images)
    scale: f32,    // g
    rescale: f32,  // phi
};

@group(0) @binding(0) var<uniform> gp: GuidanceParams;
@group(0) @binding(1) var<storage, read> eps: array<ST>;       // [2B, n]
@group(0) @binding(2) var<storage, read_write> out: array<ST>; // [B, n]

fn cfg_at(b: u32, i: u32) -> vec2<f32> {
    let u = f32(eps[b * gp.n + i]);
    let c = f32(eps[(gp.images + b) * gp.n + i]);
    return vec2<f32>(c, u + gp.scale * (c - u));
}

@compute @workgroup_size(256)
fn cfg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid;
    if (i >= gp.n * gp.images) { return; }
    let b = i / gp.n;
    out[i] = ST(cfg_at(b, i % gp.n).y);
}

var<workgroup> red: array<vec2<f32>, 256>;

// Sums of a vec2 over the workgroup (all invocations must call it).
fn reduce(v: vec2<f32>, lid: u32) -> vec2<f32> {
    red[lid] = v;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if (lid < s) { red[lid] = red[lid] + red[lid + s]; }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

// One workgroup per image: means, then unbiased variances of c and cfg, then the output.
@compute @workgroup_size(256)
fn cfg_rescale(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = wid.x;
    var s = vec2<f32>();
    for (var i = lid; i < gp.n; i = i + 256u) { s = s + cfg_at(b, i); }
    let mean = reduce(s, lid) / f32(gp.n);
    var q = vec2<f32>();
    for (var i = lid; i < gp.n; i = i + 256u) {
        let d = cfg_at(b, i) - mean;
        q = q + d * d;
    }
    let var_ = reduce(q, lid) / f32(max(gp.n, 2u) - 1u);
    let ratio = sqrt(var_.x) / sqrt(var_.y);
    for (var i = lid; i < gp.n; i = i + 256u) {
        let g = cfg_at(b, i).y;
        out[b * gp.n + i] = ST(gp.rescale * g * ratio + (1.0 - gp.rescale) * g);
    }
}
