//! The `election` crate against a real etcd: the leader key's life cycle and
//! the local deadline (DESIGN.md invariants 1 and 3).

use std::time::Duration;

use dcs::{EtcdSettings, connect};
use election::{
    Acquired, BootInstant, Election, ElectionError, ElectionSettings, LeaseState, WatchEvent, spawn_renewal, watch,
};
use pgwarden_integration_tests::{EtcdCluster, init_logging, wait_until};

const TTL: Duration = Duration::from_secs(3);
const MARGIN: Duration = Duration::from_secs(1);

async fn contender(endpoints: Vec<String>, key: &str, member: &str) -> Election {
    contender_with_ttl(endpoints, key, member, TTL).await
}

async fn contender_with_ttl(endpoints: Vec<String>, key: &str, member: &str, ttl: Duration) -> Election {
    let settings = EtcdSettings {
        endpoints,
        request_timeout: Duration::from_millis(800),
        username: None,
        password: None,
        cacert: None,
        cert: None,
        key: None,
        // The endpoints each test names, and no others.
        discover_members: false,
        srv: None,
    };
    let client = connect(&settings).await.expect("connect to etcd");
    Election::new(
        client,
        ElectionSettings {
            key: key.to_string(),
            member: member.to_string(),
            ttl,
            fence_margin: MARGIN,
            request_timeout: Duration::from_millis(800),
        },
    )
}

const KEY: &str = "/service/test/leader";

#[tokio::test]
async fn two_contenders_race_and_exactly_one_wins() {
    init_logging();
    let etcd = EtcdCluster::start(1).await.expect("start etcd");
    let mut a = contender(etcd.endpoints(), KEY, "a").await;
    let mut b = contender(etcd.endpoints(), KEY, "b").await;
    let lease_a = a.grant().await.expect("grant a");
    let lease_b = b.grant().await.expect("grant b");
    let (ra, rb) = tokio::join!(a.acquire(&lease_a), b.acquire(&lease_b));
    let (ra, rb) = (ra.expect("a's attempt answered"), rb.expect("b's attempt answered"));
    let winners = [&ra, &rb].iter().filter(|r| matches!(r, Acquired::Won { .. })).count();
    assert_eq!(winners, 1, "exactly one wins: {ra:?} {rb:?}");
    let (winner, winner_lease, loser_view) = match (&ra, &rb) {
        (Acquired::Won { .. }, Acquired::Held(holder)) => ("a", lease_a.id, holder.clone()),
        (Acquired::Held(holder), Acquired::Won { .. }) => ("b", lease_b.id, holder.clone()),
        other => panic!("unexpected outcome {other:?}"),
    };
    assert_eq!(loser_view.member, winner, "the loser sees the holder");
    assert_eq!(loser_view.lease, winner_lease, "the holder's key is on the holder's lease");
    let holder = a.holder().await.expect("read holder").expect("key exists");
    assert_eq!(holder.member, winner);
}

#[tokio::test]
async fn a_silent_holder_loses_the_key_within_ttl_and_its_deadline_fires_first() {
    init_logging();
    let etcd = EtcdCluster::start(1).await.expect("start etcd");
    let mut holder = contender(etcd.endpoints(), KEY, "a").await;
    let mut lease = holder.grant().await.expect("grant");
    assert!(matches!(holder.acquire(&lease).await.expect("acquire"), Acquired::Won { .. }));
    let mut watcher = watch(holder.etcd(), KEY, false, None).await.expect("watch the key");
    let renewed_at = BootInstant::now();
    let deadline = holder.renew(&mut lease).await.expect("renew once");
    let answered_at = BootInstant::now();
    assert!(
        deadline >= (renewed_at + TTL).saturating_sub(MARGIN) && deadline <= (answered_at + TTL).saturating_sub(MARGIN),
        "the deadline is the send time + ttl - margin"
    );
    // Stop renewing: etcd must delete the key when the lease runs out.
    let deleted_at = tokio::time::timeout(TTL * 3, async {
        loop {
            let events = watcher.next().await.expect("watch stays open").expect("watch not cancelled");
            if events.iter().any(|e| matches!(e, WatchEvent::Delete { .. })) {
                return BootInstant::now();
            }
        }
    })
    .await
    .expect("the DELETE arrives after the lease expires");
    let lost_after = deleted_at.saturating_duration_since(renewed_at);
    assert!(lost_after <= TTL + Duration::from_secs(2), "key lost {lost_after:?} after the last renewal");
    assert!(
        deadline < deleted_at,
        "the local deadline ({:?} after renewal) must fall before the key is gone ({lost_after:?})",
        deadline.saturating_duration_since(renewed_at)
    );
    assert!(
        deleted_at.saturating_duration_since(deadline) >= MARGIN - Duration::from_millis(50),
        "the deadline leaves at least the fence margin"
    );
    assert!(matches!(
        holder.renew(&mut lease).await,
        Err(ElectionError::LeaseLost(_)) | Err(ElectionError::NotHolder { .. })
    ));
}

#[tokio::test]
async fn a_key_deleted_behind_the_holders_back_fails_the_next_renewal() {
    init_logging();
    let etcd = EtcdCluster::start(1).await.expect("start etcd");
    let mut holder = contender(etcd.endpoints(), KEY, "a").await;
    let mut lease = holder.grant().await.expect("grant");
    assert!(matches!(holder.acquire(&lease).await.expect("acquire"), Acquired::Won { .. }));
    holder.renew(&mut lease).await.expect("renewal while the key is ours");
    let mut admin = etcd.client().await.expect("admin client");
    admin.delete(KEY, None).await.expect("delete the key");
    match holder.renew(&mut lease).await {
        Err(ElectionError::NotHolder { .. }) => {}
        other => panic!("renewal must fail once the key is gone, got {other:?}"),
    }
    // The same when another member's value sits in the key.
    admin.put(KEY, "intruder", None).await.expect("overwrite");
    assert!(matches!(holder.renew(&mut lease).await, Err(ElectionError::NotHolder { .. })));
}

#[tokio::test]
async fn release_hands_over_at_once() {
    init_logging();
    let etcd = EtcdCluster::start(1).await.expect("start etcd");
    let mut a = contender(etcd.endpoints(), KEY, "a").await;
    let mut b = contender(etcd.endpoints(), KEY, "b").await;
    let lease_a = a.grant().await.expect("grant a");
    let lease_b = b.grant().await.expect("grant b");
    assert!(matches!(a.acquire(&lease_a).await.expect("a acquires"), Acquired::Won { .. }));
    assert!(matches!(b.acquire(&lease_b).await.expect("b tries"), Acquired::Held(_)));
    // b may not release a's key.
    assert!(!b.release(&lease_b).await.expect("b's release answered"));
    assert!(a.release(&lease_a).await.expect("a releases"), "a's release deletes the key");
    assert!(matches!(b.acquire(&lease_b).await.expect("b acquires"), Acquired::Won { .. }), "hand-over is immediate");
    // a's member lease survives its release.
    let mut lease_a = lease_a;
    a.keep_alive(&mut lease_a).await.expect("a's lease is still alive");
}

#[tokio::test]
async fn the_renewal_task_keeps_the_key_and_reports_its_loss() {
    init_logging();
    let etcd = EtcdCluster::start(1).await.expect("start etcd");
    let mut a = contender(etcd.endpoints(), KEY, "a").await;
    let lease = a.grant().await.expect("grant");
    assert!(matches!(a.acquire(&lease).await.expect("acquire"), Acquired::Won { .. }));
    let first_deadline = lease.deadline;
    let handle = spawn_renewal(a, lease, Duration::from_millis(500), true);
    let mut state = handle.subscribe();
    // Held well past the first lease's TTL: the renewals work.
    tokio::time::sleep(TTL + Duration::from_secs(1)).await;
    match handle.current() {
        LeaseState::Held { deadline, .. } => {
            assert!(deadline > first_deadline, "the deadline moved forward")
        }
        lost => panic!("still held after {TTL:?}: {lost:?}"),
    }
    // Someone deletes the key: the task must report the loss by itself.
    let mut admin = etcd.client().await.expect("admin client");
    admin.delete(KEY, None).await.expect("delete the key");
    let lost = wait_until("the renewal task to report the loss", TTL, || {
        let current = state.borrow_and_update().clone();
        async move { Ok::<_, String>(matches!(current, LeaseState::Lost { .. }).then_some(current)) }
    })
    .await
    .expect("loss reported");
    assert!(matches!(lost, LeaseState::Lost { .. }));
}

#[tokio::test]
async fn one_of_three_etcd_members_killed_loses_nothing() {
    init_logging();
    let mut etcd = EtcdCluster::start(3).await.expect("start a three-member etcd");
    // Killing etcd's leader costs an election (about a second here), so the
    // lease must outlive that, as a production ttl does.
    let ttl = Duration::from_secs(5);
    let mut a = contender_with_ttl(etcd.endpoints(), KEY, "a", ttl).await;
    let lease = a.grant().await.expect("grant");
    assert!(matches!(a.acquire(&lease).await.expect("acquire"), Acquired::Won { .. }));
    let handle = spawn_renewal(a, lease, Duration::from_millis(500), true);
    let mut state = handle.subscribe();
    // Kill each member in turn (restarting it before the next) so that the
    // member the client talks to is among them.
    for idx in 0..3 {
        etcd.kill(idx);
        // Longer than a TTL with the member dead: without renewals the key would be gone.
        let start = BootInstant::now();
        while BootInstant::now().saturating_duration_since(start) < ttl * 3 / 2 {
            if let LeaseState::Lost { reason, .. } = &*state.borrow_and_update() {
                panic!("ownership lost after killing etcd member {idx}: {reason}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        etcd.restart(idx).await.expect("restart the member");
    }
    let mut admin = etcd.client().await.expect("admin client");
    let value = admin.get(KEY, None).await.expect("read the key");
    assert_eq!(value.kvs().first().map(|kv| kv.value().to_vec()), Some(b"a".to_vec()), "the key still names a");
    assert!(matches!(handle.current(), LeaseState::Held { .. }));
}

#[tokio::test]
async fn a_member_down_at_connect_time_is_skipped() {
    init_logging();
    let mut etcd = EtcdCluster::start(3).await.expect("start a three-member etcd");
    etcd.kill(0);
    // If member 0 led the cluster, the others elect a new leader first.
    etcd.wait_healthy(Duration::from_secs(30)).await.expect("the two others serve");
    // The dead member is listed first, so the very first call meets it.
    let mut a = contender(etcd.endpoints(), KEY, "a").await;
    assert_eq!(a.etcd().current_endpoint(), etcd.endpoints()[0]);
    // Several calls, so the balancer would route some to the dead member.
    for _ in 0..10 {
        let lease = a.grant().await.expect("grant while member 0 is down");
        a.revoke(&lease).await.expect("revoke while member 0 is down");
    }
    let lease = a.grant().await.expect("grant");
    assert!(matches!(a.acquire(&lease).await.expect("acquire"), Acquired::Won { .. }));
    assert_ne!(a.etcd().current_endpoint(), etcd.endpoints()[0], "moved off the dead member");
}
