//! `pgwardenctl migrate-v2`: moves a Patroni cluster's lasting keys from
//! etcd's v2 keyspace (where Patroni keeps an `etcd:` section's cluster) to
//! the v3 keyspace, so that Patroni (switched to `etcd3:`) and then pgwarden
//! find it there; and, with `--remove-v2`, deletes the v2 copy once no
//! Patroni member runs on v2 any more.
//!
//! The copy is one v3 transaction that creates each key only where it is
//! absent: it never overwrites a v3 cluster. It requires the cluster paused
//! (Patroni's `pause` in the v2 `config` key, copied with it): while the
//! members move from v2 to v3 one by one, each half sees only its own leader
//! key, and only a pause keeps either half from promoting.

use anyhow::bail;
use dcs::v2::{self, V2Scope};
use pgwarden_config::Config;

use crate::actions::Target;

pub struct MigrateV2 {
    pub remove_v2: bool,
    pub force: bool,
}

pub async fn migrate_v2(config: &Config, target: &Target, options: MigrateV2) -> anyhow::Result<()> {
    let timeout = config.etcd_request_timeout(config.bootstrap.dcs.retry_timeout);
    let mut settings = dcs::EtcdSettings::from_config(&config.etcd, timeout);
    // The endpoints connecting found (from DNS SRV records with `srv`).
    settings.endpoints = target.etcd.endpoints();
    let dir = v2::scope_dir(&config.namespace, &target.scope);
    let found = v2::probe(&settings, &config.namespace, &target.scope).await.map_err(anyhow::Error::msg)?;
    let view = dcs::read_cluster(&target.etcd, &target.keys)
        .await
        .map_err(|e| anyhow::anyhow!("cannot read cluster {} from etcd: {}", target.scope, dcs::describe_error(&e)))?;
    let cluster = match found {
        V2Scope::Disabled => bail!(
            "etcd does not serve its v2 API (started without --enable-v2), so no cluster can be there: nothing to do"
        ),
        V2Scope::Absent => bail!("etcd's v2 keyspace holds nothing under {dir}: nothing to do"),
        V2Scope::Present(cluster) => cluster,
    };
    let v3_initialize = view.initialize.as_deref().filter(|id| !id.is_empty());
    if options.remove_v2 {
        if cluster.is_live() {
            bail!(
                "a Patroni member still runs on v2 under {dir} (leader: {}; members: {}): switch every member to \
                 `etcd3:` first; nothing removed",
                cluster.leader().unwrap_or("none"),
                cluster.members().join(", ")
            );
        }
        let migrated = v3_initialize.is_some() && v3_initialize == cluster.initialize();
        if !migrated && !options.force {
            bail!(
                "the v2 keys under {dir} (system identifier {}) were not copied to v3 (v3: {}): run migrate-v2 \
                 without --remove-v2 first, or add --force if that cluster is gone for good; nothing removed",
                cluster.initialize().unwrap_or("unknown"),
                v3_initialize.unwrap_or("no cluster")
            );
        }
        v2::remove(&settings, &config.namespace, &target.scope).await.map_err(anyhow::Error::msg)?;
        println!("Removed {dir} from etcd's v2 keyspace ({} keys).", cluster.keys.len());
        return Ok(());
    }
    if !cluster.paused() {
        bail!(
            "cluster {} is not paused: pause it first (patronictl -c <its config> pause --wait), so that no member \
             promotes while members move from v2 to v3; nothing copied",
            target.scope
        );
    }
    if let Some(v3) = v3_initialize {
        if Some(v3) == cluster.initialize() {
            println!(
                "etcd's v3 keyspace already holds cluster {} (system identifier {v3}): nothing copied.",
                target.scope
            );
            return Ok(());
        }
        bail!(
            "etcd's v3 keyspace already holds another cluster under {} (system identifier {v3}, v2: {}): \
             nothing copied",
            target.keys.prefix(),
            cluster.initialize().unwrap_or("unknown")
        );
    }
    let copies = v2::keys_to_copy(&cluster);
    if !copies.iter().any(|(name, _)| *name == "initialize") {
        bail!("the v2 keys under {dir} have no initialize key: not a complete cluster; nothing copied");
    }
    let prefix = target.keys.prefix().to_string();
    let keys: Vec<(String, String)> =
        copies.iter().map(|(name, value)| (format!("{prefix}{name}"), value.to_string())).collect();
    let created = target
        .etcd
        .create_all_if_absent(&keys)
        .await
        .map_err(|e| anyhow::anyhow!("copy the keys to etcd's v3 keyspace: {}", dcs::describe_error(&e)))?;
    if !created {
        bail!("a key under {prefix} appeared in etcd's v3 keyspace meanwhile: nothing copied; run it again to see why");
    }
    let names: Vec<&str> = copies.iter().map(|(name, _)| *name).collect();
    println!("Copied {} from {dir} (v2) to {prefix} (v3); the cluster stays paused.", names.join(", "));
    println!("Next, on every node (replicas first, the leader last): change `etcd:` to `etcd3:` in patroni.yml and");
    println!("restart Patroni; then resume (patronictl -c <etcd3 config> resume --wait) and, once no member is left");
    println!("on v2, remove the v2 copy: pgwardenctl -c <config> migrate-v2 --remove-v2");
    Ok(())
}
