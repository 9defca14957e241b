//! The invariants checked after every event: one writer, no acknowledged
//! commit lost, and that the cluster recovers once healed.

use super::*;

impl World {
    pub(super) fn check_safety(&mut self) {
        let primaries: Vec<&str> =
            self.nodes.iter().filter(|n| n.pg.run == Run::Primary).map(|n| n.name.as_str()).collect();
        if primaries.len() > 1 {
            let what = format!("two writers: {} run as primary at once", primaries.join(" and "));
            self.violate(what);
        }
        if let Some((holder, lease)) = self.etcd.leader
            && self.etcd.leases.get(&lease).is_none_or(|l| l.owner != holder)
        {
            let what = format!("the leader key names {} but sits on another node's lease", self.nodes[holder].name);
            self.violate(what);
        }
        // Every acknowledged commit is on all but `quorum` of the standbys
        // the `sync` key lists (all of them out of quorum commit), so any
        // `quorum + 1` of them include one that has it.
        if self.sync_dirty && self.etcd.config.sync_mode {
            self.sync_dirty = false;
            if let Some(sync) = self.etcd.sync.clone() {
                for (id, lsn) in self.must_survive.clone() {
                    let lacking: Vec<&str> = sync
                        .standbys
                        .iter()
                        .filter(|s| {
                            let data = self.nodes[**s].pg.data.as_ref();
                            data.is_none_or(|d| d.wal.get(lsn as usize - 1) != Some(&id))
                        })
                        .map(|s| self.nodes[*s].name.as_str())
                        .collect();
                    if lacking.len() > sync.quorum {
                        let what = format!(
                            "commit {id} (lsn {lsn}) was acknowledged in synchronous mode but {} (listed in sync, \
                             quorum {}) lack it",
                            lacking.join(", "),
                            sync.quorum
                        );
                        self.violate(what);
                        return;
                    }
                }
            }
        }
    }

    pub(super) fn check_liveness(&mut self) {
        let leader = self.etcd.leader.map(|(l, _)| l);
        let primaries: Vec<usize> = (0..self.nodes.len()).filter(|i| self.nodes[*i].pg.run == Run::Primary).collect();
        let problem = match (leader, primaries.as_slice()) {
            (None, _) => Some("no leader".to_string()),
            (Some(l), [p]) if *p == l => {
                let lagging: Vec<String> = (0..self.nodes.len())
                    .filter(|r| *r != l)
                    .filter(|r| {
                        let pg = &self.nodes[*r].pg;
                        !(pg.run == Run::Replica && pg.upstream == Some(l) && pg.streaming)
                    })
                    .map(|r| format!("{} ({})", self.nodes[r].name, self.nodes[r].agent.last_reason))
                    .collect();
                (!lagging.is_empty()).then(|| format!("not streaming from the leader: {}", lagging.join("; ")))
            }
            (Some(l), _) => Some(format!("leader {} but {} primaries", self.nodes[l].name, primaries.len())),
        };
        if let Some(problem) = problem {
            let what = format!(
                "liveness: {} ms after every fault healed: {problem}; reasons: {}",
                self.p.heal_bound,
                self.nodes
                    .iter()
                    .map(|n| format!("{}: {}", n.name, n.agent.last_reason))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
            self.violate(what);
        }
    }
}
