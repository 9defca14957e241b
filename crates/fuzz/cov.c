/* Edge counters for coverage-guided fuzzing. `make fuzz` builds the Rust
 * code with LLVM's SanitizerCoverage (trace-pc-guard); each instrumented edge
 * calls the function below with its own guard, numbered at start-up. In a
 * build without those flags nothing calls them and the map stays empty: the
 * fuzzer then mutates without guidance. */
#include <stdint.h>
#include <stddef.h>
#include <string.h>

#define PGW_EDGES 262144
static uint8_t pgw_counts[PGW_EDGES] __attribute__((aligned(8)));
static uint32_t pgw_next_guard;

void __sanitizer_cov_trace_pc_guard_init(uint32_t *start, uint32_t *stop) {
    if (start == stop || *start) return;
    for (uint32_t *guard = start; guard < stop; guard++) {
        *guard = (pgw_next_guard++ % (PGW_EDGES - 1)) + 1;
    }
}

void __sanitizer_cov_trace_pc_guard(uint32_t *guard) {
    uint8_t *count = &pgw_counts[*guard];
    if (*count < 255) (*count)++;
}

/* AFL's hit-count buckets: 1, 2, 3, 4-7, 8-15, 16-31, 32-127, 128+. */
static uint8_t pgw_bucket(uint8_t count) {
    if (count == 0) return 0;
    if (count <= 2) return count;
    if (count == 3) return 4;
    if (count <= 7) return 8;
    if (count <= 15) return 16;
    if (count <= 31) return 32;
    if (count <= 127) return 64;
    return 128;
}

/* Clears the counts (before an input runs). */
void pgw_clear(void) { memset(pgw_counts, 0, PGW_EDGES); }

/* Merges the counts of the input that just ran into `seen` (PGW_EDGES
 * bytes of bucket bits) and clears them. Returns the number of bucket bits
 * new to `seen`; adds the edges reached for the first time to *edges. This
 * runs here, uninstrumented, so the fuzzer's own loop is not coverage. */
uint64_t pgw_merge(uint8_t *seen, uint64_t *edges) {
    uint64_t new_bits = 0;
    uint64_t *words = (uint64_t *)pgw_counts;
    for (size_t w = 0; w < PGW_EDGES / 8; w++) {
        if (words[w] == 0) continue;
        for (size_t i = w * 8; i < w * 8 + 8; i++) {
            uint8_t bit = pgw_bucket(pgw_counts[i]);
            if (bit && !(seen[i] & bit)) {
                if (!seen[i]) (*edges)++;
                seen[i] |= bit;
                new_bits++;
            }
        }
        words[w] = 0;
    }
    return new_bits;
}

uint32_t pgw_guard_count(void) { return pgw_next_guard; }
