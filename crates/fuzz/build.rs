//! The coverage callbacks are C, compiled without instrumentation: built in
//! Rust under `make fuzz`'s flags they would instrument themselves.

fn main() {
    println!("cargo:rerun-if-changed=cov.c");
    cc::Build::new().file("cov.c").compile("pgwarden_fuzz_cov");
}
