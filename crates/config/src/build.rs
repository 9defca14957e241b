//! The whole config read from its merged YAML: every section, the checks
//! that span sections, and Patroni's corrections.

use super::sections::*;
use super::*;

/// Reads every section; `None` when a required piece is missing (the problem
/// is recorded).
pub(crate) fn build(root: &Value, purpose: Purpose, problems: &mut Problems) -> Option<Config> {
    let mut r = Reader::new(root, problems);
    let node = purpose != Purpose::Ctl;
    let scope = r.required_string("scope", "the cluster name, the same on every member");
    let name = if node {
        r.required_string("name", "this member's name, unique in the cluster")
    } else {
        Some(r.string("name").unwrap_or_default())
    };
    let namespace = normalise_namespace(&r.string("namespace").unwrap_or_else(|| "/service/".into()));
    // Each names one level of the etcd layout: a `/` or `..` would land in
    // (and collide with) another cluster's or member's keys.
    for (key, value) in [("scope", scope.as_deref()), ("name", name.as_deref())] {
        if let Some(value) = value
            && (value.contains('/') || value == "." || value == "..")
        {
            r.problems.error(key, format!("{value:?} cannot name an etcd key level: no `/`, `.` or `..`"));
        }
    }
    if namespace.split('/').any(|level| level == ".." || level == ".") {
        r.problems.error("namespace", format!("{namespace:?}: `.` and `..` are not allowed in the etcd path"));
    }

    r.section("restapi");
    let listen = if node {
        match r.host_port("restapi.listen") {
            Some(listen) => Some(listen),
            None if r.get("restapi.listen").is_some() => None,
            None => {
                r.problems
                    .error("restapi.listen", "is required (host:port of this member's REST API, e.g. 0.0.0.0:8008)");
                None
            }
        }
    } else {
        r.host_port("restapi.listen").or_else(|| Some(HostPort::new("127.0.0.1", 8008)))
    };
    let connect_address = r.host_port("restapi.connect_address");
    let restapi = listen.map(|listen| RestApi {
        connect_address: connect_address.unwrap_or_else(|| HostPort::new(listen.connectable_host(), listen.port)),
        listen,
        certfile: path_of(&mut r, "restapi.certfile"),
        keyfile: path_of(&mut r, "restapi.keyfile"),
        keyfile_password: secret_of(&mut r, "restapi.keyfile_password"),
        ciphers: r.string("restapi.ciphers").and_then(|text| match crate::ciphers::parse(&text) {
            Ok((chosen, unknown)) => {
                if !unknown.is_empty() {
                    r.problems.warn(
                        "restapi.ciphers",
                        format!(
                            "names no cipher or alias pgwarden knows: {} (ignored, as OpenSSL ignores them)",
                            unknown.join(", ")
                        ),
                    );
                }
                Some(chosen)
            }
            Err(why) => {
                r.problems.error("restapi.ciphers", why);
                None
            }
        }),
        cafile: path_of(&mut r, "restapi.cafile"),
        verify_client: match r.choice("restapi.verify_client", &["none", "optional", "required"]).as_deref() {
            Some("optional") => VerifyClient::Optional,
            Some("required") => VerifyClient::Required,
            _ => VerifyClient::None,
        },
        authentication: basic_auth(&mut r, "restapi.authentication"),
        allowlist: allowlist(&mut r),
        allowlist_include_members: r.bool("restapi.allowlist_include_members", false),
        extra_headers: {
            let mut headers = header_map(&mut r, "restapi.http_extra_headers");
            let https = header_map(&mut r, "restapi.https_extra_headers");
            if r.get("restapi.certfile").is_some() {
                headers.extend(https);
            }
            headers
        },
        server_tokens: server_tokens(&mut r),
        request_queue_size: r.int("restapi.request_queue_size", 0, 4096).map(|n| n as u32),
    });

    r.section("ctl");
    let ctl = Ctl {
        cacert: path_of(&mut r, "ctl.cacert"),
        certfile: path_of(&mut r, "ctl.certfile"),
        keyfile: path_of(&mut r, "ctl.keyfile"),
        keyfile_password: secret_of(&mut r, "ctl.keyfile_password"),
        authentication: basic_auth(&mut r, "ctl.authentication"),
        insecure: r.bool("ctl.insecure", false),
    };
    let etcd = etcd_section(&mut r, purpose);

    r.section("bootstrap");
    r.section("bootstrap.dcs");
    let (dcs, dcs_json) = DynamicConfig::read(root, "bootstrap.dcs", r.problems);
    let mut users = BTreeMap::new();
    if let Some(section) = r.section("bootstrap.users") {
        for name in section.keys() {
            let base = format!("bootstrap.users.{name}");
            r.section(&base);
            users.insert(
                name.clone(),
                BootstrapUser {
                    password: secret_of(&mut r, &format!("{base}.password")),
                    options: r.string_list(&format!("{base}.options")),
                },
            );
        }
    }
    let bootstrap = Bootstrap {
        dcs,
        dcs_json,
        initdb: tool_options(&mut r, "bootstrap.initdb"),
        pg_hba: r.string_list("bootstrap.pg_hba"),
        users,
        method: methods::bootstrap_method(&mut r),
        post_bootstrap: r.string("bootstrap.post_bootstrap").or_else(|| r.string("bootstrap.post_init")),
    };
    let named: Vec<&str> = bootstrap.method.iter().map(|m| m.name.as_str()).collect();
    methods::warn_unnamed_sections(&mut r, "bootstrap", &named, "bootstrap.method");

    r.section("postgresql");
    let data_dir = if node {
        r.required_string("postgresql.data_dir", "the PostgreSQL data directory of this member")
    } else {
        Some(r.string("postgresql.data_dir").unwrap_or_default())
    };
    let listen = r.listen("postgresql.listen");
    if node && listen.is_none() && r.get("postgresql.listen").is_none() {
        r.problems.error("postgresql.listen", "is required (addresses PostgreSQL listens on, e.g. 0.0.0.0:5432)");
    }
    let connect_address = r.host_port("postgresql.connect_address");
    let mut bin_name = BTreeMap::new();
    if let Some(section) = r.section("postgresql.bin_name") {
        for key in section.keys() {
            if let Some(file) = r.string(&format!("postgresql.bin_name.{key}")) {
                bin_name.insert(key.clone(), file);
            }
        }
    }
    r.section("postgresql.authentication");
    let authentication = Authentication {
        superuser: credentials(&mut r, "postgresql.authentication.superuser", "postgres"),
        replication: credentials(&mut r, "postgresql.authentication.replication", "replicator"),
        rewind: r
            .get("postgresql.authentication.rewind")
            .is_some()
            .then(|| credentials(&mut r, "postgresql.authentication.rewind", "rewind_user")),
    };
    let mut parameters = dynamic::parameter_map(&mut r, "postgresql.parameters");
    dynamic::translate_renamed_parameters(&mut parameters, "postgresql.parameters", r.problems);
    let mut callbacks = BTreeMap::new();
    if let Some(section) = r.section("postgresql.callbacks") {
        for key in section.keys() {
            if let Some(command) = r.string(&format!("postgresql.callbacks.{key}")) {
                callbacks.insert(key.clone(), command);
            }
        }
    }
    let create_replica_methods = methods::replica_methods(&mut r);
    let named: Vec<&str> = create_replica_methods.iter().map(ReplicaMethod::name).collect();
    methods::warn_unnamed_sections(&mut r, "postgresql", &named, "postgresql.create_replica_methods");
    let postgresql = Postgresql {
        listen,
        connect_address,
        proxy_address: r.host_port("postgresql.proxy_address"),
        data_dir: PathBuf::from(data_dir.clone().unwrap_or_default()),
        config_dir: path_of(&mut r, "postgresql.config_dir").filter(|d| !d.as_os_str().is_empty()),
        custom_conf: path_of(&mut r, "postgresql.custom_conf").filter(|f| !f.as_os_str().is_empty()),
        bin_dir: path_of(&mut r, "postgresql.bin_dir"),
        bin_name,
        pgpass: path_of(&mut r, "postgresql.pgpass"),
        authentication,
        parameters,
        pg_hba: r.string_list("postgresql.pg_hba"),
        pg_ident: r.string_list("postgresql.pg_ident"),
        pg_hosts: r.string_list("postgresql.pg_hosts"),
        roles: crate::roles::read(&mut r, "postgresql"),
        krbsrvname: r.string("postgresql.krbsrvname").filter(|name| !name.is_empty()),
        create_replica_methods,
        basebackup: tool_options(&mut r, "postgresql.basebackup"),
        rewind: crate::sections::rewind_options(&mut r, "postgresql.rewind"),
        recovery_conf: methods::standby_recovery_conf(&mut r, "postgresql.recovery_conf"),
        use_pg_rewind: r.get("postgresql.use_pg_rewind").is_some().then(|| r.bool("postgresql.use_pg_rewind", false)),
        pg_ctl_timeout: crate::sections::pg_ctl_timeout(&mut r, "postgresql.pg_ctl_timeout"),
        use_slots: r.get("postgresql.use_slots").is_some().then(|| r.bool("postgresql.use_slots", true)),
        config_base_name: r
            .string("postgresql.config_base_name")
            .filter(|name| {
                let ok = !name.is_empty() && !name.contains(['/', '\0']) && name != "." && name != "..";
                if !ok {
                    r.problems.error("postgresql.config_base_name", "expected a file name without a directory");
                }
                ok
            })
            .unwrap_or_else(|| "postgresql".into()),
        database: r.string("postgresql.database").filter(|d| !d.is_empty()).unwrap_or_else(|| "postgres".into()),
        callbacks,
        pre_promote: r.string("postgresql.pre_promote"),
        before_stop: r.string("postgresql.before_stop"),
        remove_data_directory_on_rewind_failure: r.bool("postgresql.remove_data_directory_on_rewind_failure", false),
        remove_data_directory_on_diverged_timelines: r
            .bool("postgresql.remove_data_directory_on_diverged_timelines", false),
        use_unix_socket: r.bool("postgresql.use_unix_socket", false),
        use_unix_socket_repl: r.bool("postgresql.use_unix_socket_repl", false),
    };

    let tags = tags(&mut r);
    r.section("watchdog");
    let watchdog = Watchdog {
        mode: match r.choice("watchdog.mode", &["off", "automatic", "required"]).as_deref() {
            Some("automatic") => WatchdogMode::Automatic,
            Some("required") => WatchdogMode::Required,
            Some(_) => WatchdogMode::Off,
            // Patroni's default is `automatic`; with no watchdog device that is off.
            None => WatchdogMode::Automatic,
        },
        device: path_of(&mut r, "watchdog.device").unwrap_or_else(|| PathBuf::from("/dev/watchdog")),
        safety_margin: r.int("watchdog.safety_margin", -1, 3600).unwrap_or(5),
        // Patroni's drivers: `default` (the Linux device) and `testing` (its
        // test suite's named pipe). Patroni runs with no watchdog on any
        // other name; pgwarden uses the device and says so.
        driver: match r.string("watchdog.driver").as_deref() {
            None | Some("default") => WatchdogDriver::Linux,
            Some("testing") => WatchdogDriver::Testing,
            Some(driver) => {
                r.problems.warn(
                    "watchdog.driver",
                    format!(
                        "pgwarden knows the drivers default (the Linux watchdog device) and testing (Patroni's \
                         named-pipe test device); {driver:?} is ignored and the device is used as by default"
                    ),
                );
                WatchdogDriver::Linux
            }
        },
    };
    let log = log_section(&mut r);
    let pgwarden = restapi.as_ref().and_then(|restapi| pgwarden_section(&mut r, restapi));
    // The fence must be complete before the lease can expire: a margin of a
    // whole ttl or more leaves no time to lead at all.
    if let Some(section) = &pgwarden
        && section.fence_margin >= Duration::from_secs(u64::from(bootstrap.dcs.ttl))
    {
        r.problems.error(
            "pgwarden.fence_margin",
            format!(
                "{:?} must be below bootstrap.dcs.ttl ({} s): the leader is fenced that long before its lease expires",
                section.fence_margin, bootstrap.dcs.ttl
            ),
        );
    }
    // A data directory that is a system directory: never managed (the
    // ownership check would otherwise advise `chown -R postgres /`).
    if node && let Some(dir) = data_dir.as_deref() {
        let trimmed = dir.trim_end_matches('/');
        if ["", "/etc", "/usr", "/var", "/var/lib", "/home", "/root", "/tmp", "/bin", "/boot", "/opt", "/srv"]
            .contains(&trimmed)
        {
            r.problems.error(
                "postgresql.data_dir",
                format!("{dir:?} is a system directory: give PostgreSQL a directory of its own, such as /var/lib/postgresql/15/main"),
            );
        }
    }

    // A relative config_dir would depend on the directory the agent starts
    // in (Patroni's): refused rather than guessed.
    if let Some(dir) = postgresql.config_dir.as_ref().filter(|d| d.is_relative()) {
        r.problems.error(
            "postgresql.config_dir",
            format!("{} is a relative path: give the absolute one (e.g. /etc/postgresql/15/main)", dir.display()),
        );
    }

    if let Some(etcd) = &etcd
        && etcd.section == "etcd"
    {
        r.problems.notice(
            "etcd",
            "read as etcd's v3 API, like `etcd3:`; Patroni drives this section through etcd's v2 API, so at start the \
             agent looks for the scope in etcd's v2 keyspace and refuses, touching nothing, while a cluster lives \
             there (docs/migrating-from-patroni.md: `pgwardenctl migrate-v2` moves it)",
        );
    }
    Some(Config {
        scope: scope?,
        namespace,
        name: name?,
        restapi: restapi?,
        ctl,
        etcd: etcd?,
        bootstrap,
        postgresql: Postgresql { data_dir: PathBuf::from(data_dir?), ..postgresql },
        tags,
        watchdog,
        log,
        pgwarden: pgwarden?,
    })
}
