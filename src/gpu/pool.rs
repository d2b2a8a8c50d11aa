//! A pool of storage buffers reused across tensors. Buffers are grouped in size classes; a
//! tensor dropped returns its buffer to its class, and the next allocation of that class reuses
//! it. Reuse is safe in stream order: every use is recorded into the same queue, so a later op
//! that reuses a buffer runs after the earlier ops that read it.

use std::collections::HashMap;
use std::sync::Mutex;

/// Byte counters of the pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Bytes held by live tensors (size-class bytes).
    pub live_bytes: u64,
    /// Bytes held in the free lists, ready for reuse.
    pub free_bytes: u64,
    /// Highest `live_bytes + free_bytes` seen: the pool's peak GPU footprint.
    pub peak_bytes: u64,
    /// Buffers created on the device.
    pub created: u64,
    /// Allocations served from the free lists.
    pub reused: u64,
}

#[derive(Default)]
struct Inner {
    free: HashMap<u64, Vec<wgpu::Buffer>>,
    stats: PoolStats,
}

/// The buffer pool (owned by the context, shared with tensors through an `Arc`).
#[derive(Default)]
pub(crate) struct BufferPool {
    inner: Mutex<Inner>,
}

/// Size class for a request of `bytes`: multiples of 256 B up to 1 MiB, above that steps of
/// 1/8 of the power of two below the size (at most 12.5% padding).
pub(crate) fn size_class(bytes: u64) -> u64 {
    let bytes = bytes.max(4);
    if bytes <= 1 << 20 {
        return bytes.div_ceil(256) * 256;
    }
    let pow = 1u64 << (63 - bytes.leading_zeros());
    let step = pow / 8;
    bytes.div_ceil(step) * step
}

impl BufferPool {
    /// Takes a free buffer of `class` bytes, if any.
    pub(crate) fn take(&self, class: u64) -> Option<wgpu::Buffer> {
        let mut g = self.inner.lock().unwrap();
        let buf = g.free.get_mut(&class).and_then(|v| v.pop())?;
        g.stats.free_bytes -= class;
        g.stats.live_bytes += class;
        g.stats.reused += 1;
        Some(buf)
    }

    /// Records a freshly created buffer of `class` bytes as live.
    pub(crate) fn created(&self, class: u64) {
        let mut g = self.inner.lock().unwrap();
        g.stats.live_bytes += class;
        g.stats.created += 1;
        let total = g.stats.live_bytes + g.stats.free_bytes;
        g.stats.peak_bytes = g.stats.peak_bytes.max(total);
    }

    /// Returns a buffer to its free list.
    pub(crate) fn release(&self, buf: wgpu::Buffer, class: u64) {
        let mut g = self.inner.lock().unwrap();
        g.stats.live_bytes -= class;
        g.stats.free_bytes += class;
        g.free.entry(class).or_default().push(buf);
    }

    /// Drops every free buffer (returns the memory to the driver).
    pub(crate) fn trim(&self) {
        let mut g = self.inner.lock().unwrap();
        g.free.clear();
        g.stats.free_bytes = 0;
    }

    pub(crate) fn stats(&self) -> PoolStats {
        self.inner.lock().unwrap().stats
    }

    pub(crate) fn reset_peak(&self) {
        let mut g = self.inner.lock().unwrap();
        g.stats.peak_bytes = g.stats.live_bytes + g.stats.free_bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn size_classes_bound_padding() {
        assert_eq!(size_class(1), 256);
        assert_eq!(size_class(256), 256);
        assert_eq!(size_class(257), 512);
        for bytes in [(1u64 << 20) + 1, 3_000_000, 123_456_789, 5 << 30] {
            let c = size_class(bytes);
            assert!(c >= bytes && (c - bytes) * 8 <= bytes, "{bytes} -> {c}");
            assert_eq!(size_class(c), c, "classes are fixed points");
        }
    }
}
