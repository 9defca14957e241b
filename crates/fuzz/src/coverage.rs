//! The edge map kept by `cov.c`, merged after each input (in C, so that the
//! fuzzer's own loop is not instrumented). AFL's hit-count buckets turn
//! counts into bits; an input is kept when it sets a bit no earlier input set.
#![allow(unsafe_code)] // The calls into cov.c; nothing else here is unsafe.

/// The size of cov.c's map (`PGW_EDGES`): more than the edges of the whole
/// instrumented binary (about 200,000), so few of them share a counter.
pub const EDGES: usize = 1 << 18;

unsafe extern "C" {
    fn pgw_clear();
    fn pgw_merge(seen: *mut u8, edges: *mut u64) -> u64;
    fn pgw_guard_count() -> u32;
}

/// How many instrumented edges the binary has (0 without `make fuzz`'s flags).
pub fn instrumented_edges() -> u32 {
    // SAFETY: reads one integer cov.c only writes during start-up.
    unsafe { pgw_guard_count() }
}

/// Every (edge, bucket) seen so far.
pub struct Coverage {
    seen: Vec<u8>,
    edges: u64,
}

impl Default for Coverage {
    fn default() -> Self {
        Self { seen: vec![0; EDGES], edges: 0 }
    }
}

impl Coverage {
    /// Forgets the hits so far, before an input runs.
    pub fn reset(&mut self) {
        // SAFETY: clears cov.c's own map.
        unsafe { pgw_clear() }
    }

    /// Takes the hits of the input that just ran; true when it reached an
    /// edge or a hit count no input reached before.
    pub fn merge(&mut self) -> bool {
        // SAFETY: `seen` holds exactly EDGES bytes, as cov.c reads and writes.
        unsafe { pgw_merge(self.seen.as_mut_ptr(), &mut self.edges) > 0 }
    }

    /// Edges with at least one hit so far.
    pub fn edges(&self) -> u64 {
        self.edges
    }
}
