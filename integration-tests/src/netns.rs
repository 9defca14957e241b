//! Hosts in network namespaces, joined by veth pairs to one bridge: a small
//! network on one machine whose links a test can cut (nftables), degrade
//! (packet loss by nftables, delay by `tc netem` where the kernel has it,
//! else a `tbf` rate limit) and heal. Needs root, `ip`, `tc` and `nft`.
//!
//! The bridge sits in the caller's namespace with the subnet's `.1`, so the
//! caller reaches every host. Names carry this process's id: a run that died
//! without cleaning up is found and removed by the next one
//! ([`Net::reap_orphans`]).

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};

use nix::sched::{CloneFlags, setns};
use nix::unistd::{Gid, Uid, setgid, setgroups, setuid};

/// One host: a namespace with `lo` and `eth0` up.
#[derive(Debug, Clone)]
pub struct Host {
    /// A short role name (`n1`, `e2`, `haproxy`).
    pub role: String,
    pub ns: String,
    pub ip: Ipv4Addr,
    /// The namespace's end of the veth pair is `eth0`; this is the bridge's end.
    bridge_end: String,
    /// Whether a link fault (loss, delay) is on this host's `eth0` now.
    shaped: bool,
}

/// A rule added by [`Net::drop_traffic`] or [`Net::lose_packets`], to delete on heal.
#[derive(Debug, Clone)]
pub struct Rule {
    ns: String,
    chain: &'static str,
    handle: u64,
}

/// The bridge and its hosts; everything is removed on drop.
pub struct Net {
    prefix: String,
    bridge: String,
    subnet: [u8; 3],
    pub hosts: Vec<Host>,
    /// Whether `tc netem` works here (`CONFIG_NET_SCH_NETEM`).
    pub netem: bool,
}

const NETNS_DIR: &str = "/var/run/netns";

fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| anyhow::anyhow!("run {program}: {e} (apt-get install iproute2 nftables)"))?;
    anyhow::ensure!(
        output.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn in_ns(ns: &str, program: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut full = vec!["netns", "exec", ns, program];
    full.extend_from_slice(args);
    run("ip", &full)
}

fn pid_alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

impl Net {
    /// Creates the bridge `pgwb<pid>` with `10.213.<k>.1/24` (the first free
    /// `<k>`) and one namespace per role, `pgwc<pid>-<role>`, at `.11`, `.12`,
    /// ... in order.
    pub fn create(roles: &[&str]) -> anyhow::Result<Self> {
        Self::reap_orphans();
        let pid = std::process::id();
        let used = run("ip", &["-4", "-o", "addr", "show"])?;
        let third = (1..=254u8)
            .find(|k| !used.contains(&format!("10.213.{k}.")))
            .ok_or_else(|| anyhow::anyhow!("no free 10.213.x.0/24 subnet"))?;
        let mut net = Self {
            prefix: format!("pgwc{pid}-"),
            bridge: format!("pgwb{pid}"),
            subnet: [10, 213, third],
            hosts: Vec::new(),
            netem: false,
        };
        run("ip", &["link", "add", &net.bridge, "type", "bridge"])?;
        run("ip", &["addr", "add", &format!("{}/24", net.gateway()), "dev", &net.bridge])?;
        run("ip", &["link", "set", &net.bridge, "up"])?;
        for (i, role) in roles.iter().enumerate() {
            net.add_host(role, i)?;
        }
        net.netem = net.hosts.first().is_some_and(|h| {
            let ok = in_ns(&h.ns, "tc", &["qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"]).is_ok();
            let _ = in_ns(&h.ns, "tc", &["qdisc", "del", "dev", "lo", "root"]);
            ok
        });
        Ok(net)
    }

    fn add_host(&mut self, role: &str, index: usize) -> anyhow::Result<()> {
        let pid = std::process::id();
        let ns = format!("{}{role}", self.prefix);
        let [a, b, c] = self.subnet;
        let ip = Ipv4Addr::new(a, b, c, 11 + index as u8);
        // veth names are at most 15 bytes: pgwv<pid><letter>.
        let letter = (b'a' + index as u8) as char;
        let bridge_end = format!("pgwv{pid}{letter}");
        let host_end = format!("pgwp{pid}{letter}");
        run("ip", &["netns", "add", &ns])?;
        run("ip", &["link", "add", &bridge_end, "type", "veth", "peer", "name", &host_end])?;
        run("ip", &["link", "set", &host_end, "netns", &ns])?;
        run("ip", &["link", "set", &bridge_end, "master", &self.bridge])?;
        run("ip", &["link", "set", &bridge_end, "up"])?;
        in_ns(&ns, "ip", &["link", "set", &host_end, "name", "eth0"])?;
        in_ns(&ns, "ip", &["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        in_ns(&ns, "ip", &["link", "set", "eth0", "up"])?;
        in_ns(&ns, "ip", &["link", "set", "lo", "up"])?;
        // One table per host for the faults: rules match eth0 only, so a
        // host always reaches itself.
        in_ns(&ns, "nft", &["add", "table", "inet", "chaos"])?;
        in_ns(&ns, "nft", &["add", "chain", "inet", "chaos", "input", "{ type filter hook input priority 0; }"])?;
        in_ns(&ns, "nft", &["add", "chain", "inet", "chaos", "output", "{ type filter hook output priority 0; }"])?;
        self.hosts.push(Host { role: role.to_string(), ns, ip, bridge_end, shaped: false });
        Ok(())
    }

    /// The caller's address on the bridge (`.1`).
    pub fn gateway(&self) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, 1)
    }

    /// The subnet in CIDR notation.
    pub fn cidr(&self) -> String {
        let [a, b, c] = self.subnet;
        format!("{a}.{b}.{c}.0/24")
    }

    pub fn host(&self, role: &str) -> &Host {
        self.hosts.iter().find(|h| h.role == role).unwrap_or_else(|| panic!("no host {role}"))
    }

    /// Drops, on `host`, every packet from `from` (incoming) and, unless
    /// `one_way`, every packet to `from` (outgoing): with `one_way` the host
    /// still reaches `from`'s side of the wire but hears nothing back.
    pub fn drop_traffic(&self, host: &str, from: &[Ipv4Addr], one_way: bool) -> anyhow::Result<Vec<Rule>> {
        let ns = &self.host(host).ns;
        let mut rules = Vec::new();
        for ip in from {
            let ip = ip.to_string();
            rules.push(add_rule(ns, "input", &["iifname", "eth0", "ip", "saddr", &ip, "drop"])?);
            if !one_way {
                rules.push(add_rule(ns, "output", &["oifname", "eth0", "ip", "daddr", &ip, "drop"])?);
            }
        }
        Ok(rules)
    }

    /// Drops `percent` % of `host`'s packets on `eth0`, both ways.
    pub fn lose_packets(&self, host: &str, percent: u32) -> anyhow::Result<Vec<Rule>> {
        let ns = &self.host(host).ns;
        let p = percent.to_string();
        Ok(vec![
            add_rule(ns, "input", &["iifname", "eth0", "numgen", "random", "mod", "100", "<", &p, "drop"])?,
            add_rule(ns, "output", &["oifname", "eth0", "numgen", "random", "mod", "100", "<", &p, "drop"])?,
        ])
    }

    /// Slows `host`'s outgoing packets: `delay_ms` with netem, else (no
    /// netem in this kernel) a rate limit of `fallback_kbit` whose queue
    /// delays what the host sends by up to a second. Returns what was applied.
    pub fn slow_link(&mut self, host: &str, delay_ms: u32, fallback_kbit: u32) -> anyhow::Result<String> {
        let netem = self.netem;
        let h = self.hosts.iter_mut().find(|h| h.role == host).ok_or_else(|| anyhow::anyhow!("no host {host}"))?;
        anyhow::ensure!(!h.shaped, "{host}'s link is already slowed");
        let applied = if netem {
            let d = format!("{delay_ms}ms");
            let j = format!("{}ms", delay_ms / 4);
            in_ns(&h.ns, "tc", &["qdisc", "add", "dev", "eth0", "root", "netem", "delay", &d, &j])?;
            format!("netem delay {d} ± {j}")
        } else {
            let rate = format!("{fallback_kbit}kbit");
            in_ns(
                &h.ns,
                "tc",
                &["qdisc", "add", "dev", "eth0", "root", "tbf", "rate", &rate, "burst", "16kb", "latency", "1s"],
            )?;
            format!("tbf rate {rate} (no netem in this kernel)")
        };
        h.shaped = true;
        Ok(applied)
    }

    /// Removes [`Net::slow_link`]'s queue from `host`.
    pub fn restore_link(&mut self, host: &str) -> anyhow::Result<()> {
        let h = self.hosts.iter_mut().find(|h| h.role == host).ok_or_else(|| anyhow::anyhow!("no host {host}"))?;
        if h.shaped {
            in_ns(&h.ns, "tc", &["qdisc", "del", "dev", "eth0", "root"])?;
            h.shaped = false;
        }
        Ok(())
    }

    /// Deletes rules added by [`Net::drop_traffic`] or [`Net::lose_packets`]:
    /// every one is tried; the first failure is returned.
    pub fn delete_rules(&self, rules: &[Rule]) -> anyhow::Result<()> {
        let mut result = Ok(());
        for rule in rules {
            let handle = rule.handle.to_string();
            let deleted = in_ns(&rule.ns, "nft", &["delete", "rule", "inet", "chaos", rule.chain, "handle", &handle]);
            if let (Err(e), Ok(())) = (deleted, &result) {
                result = Err(e);
            }
        }
        result
    }

    /// Removes every fault: all rules, all queues.
    pub fn heal_all(&mut self) -> anyhow::Result<()> {
        for h in &mut self.hosts {
            in_ns(&h.ns, "nft", &["flush", "table", "inet", "chaos"])?;
            if h.shaped {
                in_ns(&h.ns, "tc", &["qdisc", "del", "dev", "eth0", "root"])?;
                h.shaped = false;
            }
        }
        Ok(())
    }

    /// Removes what runs of processes that are gone left behind: their
    /// namespaces, veth pairs and bridges.
    pub fn reap_orphans() {
        let dead = |name: &str, prefix: &str| -> bool {
            name.strip_prefix(prefix)
                .map(|rest| rest.chars().take_while(char::is_ascii_digit).collect::<String>())
                .and_then(|pid| pid.parse::<i32>().ok())
                .is_some_and(|pid| pid != std::process::id() as i32 && !pid_alive(pid))
        };
        if let Ok(entries) = std::fs::read_dir(NETNS_DIR) {
            for entry in entries.filter_map(Result::ok) {
                let name = entry.file_name().to_string_lossy().into_owned();
                if dead(&name, "pgwc") {
                    let _ = run("ip", &["netns", "del", &name]);
                }
            }
        }
        if let Ok(links) = run("ip", &["-o", "link", "show"]) {
            for link in links.lines().filter_map(|l| l.split(':').nth(1)) {
                let name = link.trim().split('@').next().unwrap_or_default();
                if dead(name, "pgwb") || dead(name, "pgwv") {
                    let _ = run("ip", &["link", "del", name]);
                }
            }
        }
    }

    /// A command that runs in `host`'s namespace, as `postgres` when
    /// `as_postgres` (and we are root).
    #[allow(unsafe_code)] // pre_exec: entering the namespace between fork and exec
    pub fn command(&self, host: &str, program: &std::path::Path, as_postgres: bool) -> anyhow::Result<Command> {
        let ns = &self.host(host).ns;
        let file = File::open(format!("{NETNS_DIR}/{ns}"))?;
        let user = if as_postgres { crate::process::postgres_user() } else { None };
        let mut cmd = Command::new(program);
        if let Some(user) = &user {
            cmd.env("HOME", &user.dir).env("USER", "postgres");
        }
        let ids = user.map(|u| (u.uid.as_raw(), u.gid.as_raw()));
        // std has no safe way to enter a namespace in the child.
        // SAFETY: between fork and exec this calls only setns, setgroups,
        // setgid and setuid (async-signal-safe system calls) on values made
        // before the fork; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                setns(&file, CloneFlags::CLONE_NEWNET)?;
                if let Some((uid, gid)) = ids {
                    setgroups(&[Gid::from_raw(gid)])?;
                    setgid(Gid::from_raw(gid))?;
                    setuid(Uid::from_raw(uid))?;
                }
                Ok(())
            });
        }
        Ok(cmd)
    }
}

fn add_rule(ns: &str, chain: &'static str, expr: &[&str]) -> anyhow::Result<Rule> {
    let mut args = vec!["--echo", "--handle", "add", "rule", "inet", "chaos", chain];
    args.extend_from_slice(expr);
    let out = in_ns(ns, "nft", &args)?;
    let handle = out
        .split("# handle ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|h| h.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("nft printed no rule handle: {out:?}"))?;
    Ok(Rule { ns: ns.to_string(), chain, handle })
}

impl Drop for Net {
    fn drop(&mut self) {
        for h in &self.hosts {
            let _ = run("ip", &["netns", "del", &h.ns]);
            let _ = run("ip", &["link", "del", &h.bridge_end]);
        }
        let _ = run("ip", &["link", "del", &self.bridge]);
    }
}
