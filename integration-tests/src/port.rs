//! Free loopback ports that do not collide between test processes running in
//! parallel: a port is handed out only while this process holds an advisory
//! lock on `/tmp/pgwarden-test-ports/<port>`, kept until the process exits.

use std::fs::File;
use std::net::TcpListener;
use std::sync::Mutex;

use nix::fcntl::{Flock, FlockArg};

static HELD: Mutex<Vec<Flock<File>>> = Mutex::new(Vec::new());

/// A TCP port on 127.0.0.1 that nothing listens on and no other test process
/// has been given.
pub fn free_port() -> u16 {
    let dir = std::path::Path::new("/tmp/pgwarden-test-ports");
    std::fs::create_dir_all(dir).expect("create the port lock directory");
    for _ in 0..200 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind an ephemeral port on 127.0.0.1")
            .port();
        // A peer port (etcd) is port+1 at most by convention here; keep both free.
        if TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        let Ok(file) = File::create(dir.join(port.to_string())) else {
            continue;
        };
        if let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            HELD.lock().expect("port lock list").push(lock);
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 after 200 tries");
}

/// A free port `p` such that `p + offset` is free too for every offset, all
/// held like [`free_port`]'s: for configs that derive ports from the REST
/// port (pgwarden's agent at +1000, controller at +2000).
pub fn free_port_with_offsets(offsets: &[u16]) -> u16 {
    let dir = std::path::Path::new("/tmp/pgwarden-test-ports");
    for _ in 0..200 {
        let port = free_port();
        let mut locks = Vec::new();
        for offset in offsets {
            let Some(other) = port.checked_add(*offset) else { break };
            if TcpListener::bind(("127.0.0.1", other)).is_err() {
                break;
            }
            let Ok(file) = File::create(dir.join(other.to_string())) else { break };
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => locks.push(lock),
                Err(_) => break,
            }
        }
        if locks.len() == offsets.len() {
            HELD.lock().expect("port lock list").extend(locks);
            return port;
        }
    }
    panic!("no free port with free offsets {offsets:?} after 200 tries");
}
