//! Configs written the way the public Patroni + etcd + HAProxy guides write
//! them, changed only in addresses, ports and paths: an `etcd:` section
//! (Patroni drives it through etcd's v2 API), `bootstrap.pg_hba` with `md5`
//! host lines and no `local` line, `unix_socket_directories: '.'`,
//! `wal_keep_segments`, `users:`, the guides' timings. The same text boots a
//! pgwarden node and a Patroni node (the reference).

use std::path::Path;

use crate::cluster::{REPLICATION_PASSWORD, SUPERUSER_PASSWORD};
use crate::postgres::binaries;

/// The guide styles the tests boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guide {
    /// The most copied layout: `etcd: host:`, ttl 30 / loop_wait 10 /
    /// retry_timeout 10, `wal_keep_segments`, md5 host lines only, a socket
    /// in the data directory, an admin user made at bootstrap.
    Classic,
    /// `etcd: hosts:` as one comma-separated string, the timings
    /// `ttl: 10, loop_wait: 10, retry_timeout: 10` (corrected at load),
    /// `bin_dir`, `replication` open to every address.
    ShortTtl,
    /// Patroni's own `postgres0.yml`: `etcd: host`, the socket in the data
    /// directory's parent (`'..'`), `pg_hba` under `bootstrap`, initdb's
    /// `auth-host: md5`.
    PatroniSample,
    /// An `etcd3:` guide with SCRAM, its own `postgresql.pg_hba` (peer over
    /// the socket for postgres) and `use_unix_socket: true`.
    Etcd3Socket,
}

impl Guide {
    pub const ALL: [Guide; 4] = [Guide::Classic, Guide::ShortTtl, Guide::PatroniSample, Guide::Etcd3Socket];

    /// The scope the guide names its cluster.
    pub fn scope(self) -> &'static str {
        match self {
            Guide::Classic => "postgres",
            Guide::ShortTtl => "pg-cluster",
            Guide::PatroniSample => "batman",
            Guide::Etcd3Socket => "main",
        }
    }
}

/// What differs per node: name, ports and directories.
pub struct GuideNode<'a> {
    pub name: &'a str,
    pub rest_port: u16,
    pub pg_port: u16,
    /// The node's directory (pgpass; the data directory is `<dir>/data`).
    pub dir: &'a Path,
    /// `host:port` of etcd.
    pub etcd: &'a str,
}

/// The guide's `patroni.yml` for one node.
pub fn config(guide: Guide, node: &GuideNode<'_>) -> String {
    let GuideNode { name, rest_port, pg_port, dir, etcd } = node;
    let dir = dir.display();
    let (su, repl) = (SUPERUSER_PASSWORD, REPLICATION_PASSWORD);
    let scope = guide.scope();
    match guide {
        Guide::Classic => format!(
            r#"scope: {scope}
namespace: /service/
name: {name}

restapi:
    listen: 127.0.0.1:{rest_port}
    connect_address: 127.0.0.1:{rest_port}

etcd:
    host: {etcd}

bootstrap:
    dcs:
        ttl: 30
        loop_wait: 10
        retry_timeout: 10
        maximum_lag_on_failover: 1048576
        postgresql:
            use_pg_rewind: true
            use_slots: true
            parameters:
                wal_level: replica
                hot_standby: "on"
                wal_keep_segments: 8
                max_wal_senders: 5
                max_replication_slots: 5
                checkpoint_timeout: 30

    initdb:
    - encoding: UTF8
    - data-checksums

    pg_hba:
    - host replication replicator 127.0.0.1/32 md5
    - host all all 0.0.0.0/0 md5

    users:
        admin:
            password: admin-secret
            options:
                - createrole
                - createdb

postgresql:
    listen: 127.0.0.1:{pg_port}
    connect_address: 127.0.0.1:{pg_port}
    data_dir: {dir}/data
    bin_dir: {bin}
    pgpass: {dir}/pgpass
    authentication:
        replication:
            username: replicator
            password: {repl}
        superuser:
            username: postgres
            password: {su}
    parameters:
        unix_socket_directories: '.'
        shared_buffers: 16MB

watchdog:
    mode: off

tags:
    nofailover: false
    noloadbalance: false
    clonefrom: false
    nosync: false
"#,
            bin = binaries().bin_dir.display()
        ),
        Guide::ShortTtl => format!(
            r#"scope: {scope}
namespace: /db/
name: {name}

restapi:
  listen: 127.0.0.1:{rest_port}
  connect_address: 127.0.0.1:{rest_port}

etcd:
  hosts: {etcd}

bootstrap:
  dcs:
    ttl: 10
    loop_wait: 10
    retry_timeout: 10
    maximum_lag_on_failover: 1048576
    postgresql:
      use_pg_rewind: true
  initdb:
  - encoding: UTF8
  - data-checksums
  pg_hba:
  - host replication replicator 0.0.0.0/0 md5
  - host all all 0.0.0.0/0 md5
  users:
    admin:
      password: admin-secret
      options:
        - createrole
        - createdb

postgresql:
  listen: 127.0.0.1:{pg_port}
  connect_address: 127.0.0.1:{pg_port}
  data_dir: {dir}/data
  bin_dir: {bin}
  pgpass: {dir}/pgpass
  authentication:
    replication:
      username: replicator
      password: {repl}
    superuser:
      username: postgres
      password: {su}
  parameters:
    unix_socket_directories: '.'
    shared_buffers: 16MB

watchdog:
  mode: off

tags:
  nofailover: false
  noloadbalance: false
  clonefrom: false
  nosync: false
"#,
            bin = binaries().bin_dir.display()
        ),
        Guide::PatroniSample => format!(
            r#"scope: {scope}
#namespace: /service/
name: {name}

restapi:
  listen: 127.0.0.1:{rest_port}
  connect_address: 127.0.0.1:{rest_port}

etcd:
  #Provide host to do the initial discovery of the cluster topology:
  host: {etcd}

bootstrap:
  # This section will be written into Etcd:/<namespace>/<scope>/config after initializing new cluster
  dcs:
    ttl: 30
    loop_wait: 10
    retry_timeout: 10
    maximum_lag_on_failover: 1048576
    postgresql:
      use_pg_rewind: true
      pg_hba:
      - host replication replicator 127.0.0.1/32 md5
      - host all all 0.0.0.0/0 md5
      - local all all md5

  # some desired options for 'initdb'
  initdb:  # Note: It needs to be a list (some options need values, others are switches)
  - encoding: UTF8
  - data-checksums
  - auth-host: md5

postgresql:
  listen: 127.0.0.1:{pg_port}
  connect_address: 127.0.0.1:{pg_port}
  data_dir: {dir}/data
  bin_dir: {bin}
  pgpass: {dir}/pgpass0
  authentication:
    replication:
      username: replicator
      password: {repl}
    superuser:
      username: postgres
      password: {su}
    rewind:  # Has no effect on postgres 10 and lower
      username: rewind_user
      password: rewind-secret
  parameters:
    unix_socket_directories: '..'  # parent directory of data_dir
    shared_buffers: 16MB

watchdog:
  mode: off

tags:
    noloadbalance: false
    clonefrom: false
    nostream: false
"#,
            bin = binaries().bin_dir.display()
        ),
        Guide::Etcd3Socket => format!(
            r#"scope: {scope}
namespace: /pg/
name: {name}

restapi:
  listen: 127.0.0.1:{rest_port}
  connect_address: 127.0.0.1:{rest_port}

etcd3:
  hosts:
  - {etcd}

bootstrap:
  dcs:
    ttl: 30
    loop_wait: 10
    retry_timeout: 10
    maximum_lag_on_failover: 1048576
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        password_encryption: scram-sha-256
  initdb:
  - encoding: UTF8
  - data-checksums

postgresql:
  listen: 127.0.0.1:{pg_port}
  connect_address: 127.0.0.1:{pg_port}
  data_dir: {dir}/data
  bin_dir: {bin}
  pgpass: {dir}/pgpass
  use_unix_socket: true
  authentication:
    replication:
      username: replicator
      password: {repl}
    superuser:
      username: postgres
      password: {su}
  parameters:
    unix_socket_directories: '{dir}'
    shared_buffers: 16MB
  pg_hba:
  - local all postgres peer
  - local all all scram-sha-256
  - host replication replicator 127.0.0.1/32 scram-sha-256
  - host all all 127.0.0.1/32 scram-sha-256

watchdog:
  mode: off
"#,
            bin = binaries().bin_dir.display()
        ),
    }
}
