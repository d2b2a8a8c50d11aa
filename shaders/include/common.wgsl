// Shared helpers, prepended by the engine to every kernel family (after the ST header).

// 32-bit integer hash (lowbias32): ToMe's destination choice, synthetic fills.
fn mix32(v: u32) -> u32 {
    var x = v;
    x = x ^ (x >> 16u);
    x = x * 0x7feb352du;
    x = x ^ (x >> 15u);
    x = x * 0x846ca68bu;
    x = x ^ (x >> 16u);
    return x;
}

