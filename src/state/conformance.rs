//! The store's conformance suite: every test here runs once on the embedded
//! sled backend and once on PostgreSQL (a fresh database each), so the two
//! backends cannot drift apart. `cargo test --lib conformance`.
//!
//! Tests that need "another instance" open a second handle on the same
//! backend: a second pool on the same database for PostgreSQL; for sled,
//! which one process opens alone, the same store again.

use std::sync::Arc;

use crate::core::code::AgencyCode;
use crate::core::secrets::MasterKey;
use crate::state::audit::{Audit, AuditEvent};
use crate::state::backup;
use crate::state::instances::{InstanceBook, InstanceInfo};
use crate::state::lease::{Lease, Role};
use crate::state::pg::testdb::TestDb;
use crate::state::registry::Registry;
use crate::state::relay::{HeartbeatRelay, Relayed};
use crate::state::replay::{NonceCheck, Nonces};
use crate::state::store::Store;
use crate::state::tracking::{Claim, Tracking};

/// One backend under test, with what must live as long as its stores.
enum Backend {
    // The directory lives as long as the store in it.
    Sled(#[allow(dead_code)] tempfile::TempDir, Store),
    Pg(TestDb),
}

impl Backend {
    fn sled() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        Self::Sled(dir, store)
    }

    fn pg() -> Self {
        Self::Pg(TestDb::new())
    }

    /// A handle on the backend, as one instance would open it.
    fn open(&self) -> Store {
        match self {
            Self::Sled(_, store) => store.clone(),
            Self::Pg(db) => Store::open_postgres(db.url(), 4).unwrap(),
        }
    }

    /// A second, empty store of the same kind.
    fn fresh(&self) -> (Backend, Store) {
        let b = match self {
            Self::Sled(..) => Self::sled(),
            Self::Pg(_) => Self::pg(),
        };
        let s = b.open();
        (b, s)
    }
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod on_sled {
            $(#[test]
            fn $name() {
                super::$name(&super::Backend::sled());
            })*
        }
        mod on_postgres {
            $(#[test]
            fn $name() {
                super::$name(&super::Backend::pg());
            })*
        }
    };
}

conformance!(
    keys_order_bytewise_and_scans_agree,
    single_key_operations_report_what_was_there,
    compare_and_swap_is_atomic_across_handles,
    writes_become_durable_through_one_group_commit,
    snapshot_and_load_copy_every_table,
    registry_written_by_one_instance_is_read_by_another,
    audit_writers_on_two_instances_keep_one_chain,
    a_routing_claim_is_exclusive,
    a_nonce_is_fresh_once_across_instances,
    one_lease_holder_across_instances,
    registry_refresh_brings_another_instances_changes,
    instance_records_and_relayed_heartbeats_cross_instances,
    insert_all_new_is_all_or_nothing,
    put_max_only_moves_forward,
    insert_new_reading_reads_in_the_same_step,
    insert_pair_new_reading_does_both_inserts_and_the_read,
    an_update_after_an_insert_runs_only_when_it_inserted,
    raise_only_moves_forward_and_is_read_back,
);

fn entries(
    it: impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), crate::state::store::StoreError>>,
) -> Vec<Vec<u8>> {
    it.map(|r| r.unwrap().0).collect()
}

fn keys_order_bytewise_and_scans_agree(b: &Backend) {
    let t = b.open().by_dest();
    let keys: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        vec![1],
        vec![1, 0],
        vec![1, 0xff],
        vec![1, 0xff, 0],
        vec![2],
        vec![0x7f],
        vec![0x80],
        vec![0xff],
        vec![0xff, 0xff],
    ];
    // Inserted in reverse, read back in byte order.
    for k in keys.iter().rev() {
        t.insert(k, k).unwrap();
    }
    assert_eq!(entries(t.iter()), keys);
    assert_eq!(
        entries(t.iter().rev()),
        keys.iter().rev().cloned().collect::<Vec<_>>()
    );
    assert_eq!(entries(t.scan_prefix([1])), keys[2..6].to_vec());
    assert_eq!(entries(t.scan_prefix([1, 0xff])), keys[4..6].to_vec());
    assert_eq!(entries(t.scan_prefix([0xff])), keys[9..].to_vec());
    assert_eq!(entries(t.scan_prefix([])), keys);
    assert_eq!(entries(t.range(vec![1]..vec![2])), keys[2..6].to_vec());
    assert_eq!(entries(t.range(vec![1, 0]..=vec![2])), keys[3..7].to_vec());
    assert_eq!(entries(t.range(vec![0x80]..)), keys[8..].to_vec());
    assert_eq!(entries(t.range(..vec![1])), keys[..2].to_vec());
    // Both ends of one iterator meet without overlap.
    let mut it = t.iter();
    let (mut front, mut back) = (Vec::new(), Vec::new());
    loop {
        match it.next() {
            Some(r) => front.push(r.unwrap().0),
            None => break,
        }
        match it.next_back() {
            Some(r) => back.push(r.unwrap().0),
            None => break,
        }
    }
    back.reverse();
    front.extend(back);
    assert_eq!(front, keys);
    // More than one page of a lazily fetched backend.
    let big = b.open().deadlines();
    for i in 0..700u32 {
        big.insert(i.to_be_bytes(), [1]).unwrap();
    }
    assert_eq!(big.len().unwrap(), 700);
    assert_eq!(big.iter().rev().take(3).count(), 3);
    assert_eq!(
        big.iter().next_back().unwrap().unwrap().0,
        699u32.to_be_bytes()
    );
    assert_eq!(big.first().unwrap().unwrap().0, 0u32.to_be_bytes());
    assert_eq!(big.last().unwrap().unwrap().0, 699u32.to_be_bytes());
    big.clear().unwrap();
    assert!(big.is_empty().unwrap());
    assert_eq!(big.first().unwrap(), None);
}

fn single_key_operations_report_what_was_there(b: &Backend) {
    let t = b.open().meta();
    assert_eq!(t.get("k").unwrap(), None);
    assert!(!t.contains_key("k").unwrap());
    assert_eq!(t.insert("k", "1").unwrap(), None);
    assert_eq!(t.insert("k", "2").unwrap(), Some(b"1".to_vec()));
    assert_eq!(t.get("k").unwrap(), Some(b"2".to_vec()));
    assert!(t.contains_key("k").unwrap());
    // Empty values are values.
    t.insert("e", []).unwrap();
    assert_eq!(t.get("e").unwrap(), Some(vec![]));
    assert_eq!(t.remove("k").unwrap(), Some(b"2".to_vec()));
    assert_eq!(t.remove("k").unwrap(), None);
    let old = t
        .fetch_and_update("n", |v| Some(v.map_or(vec![1], |v| vec![v[0] + 1])))
        .unwrap();
    assert_eq!(old, None);
    let old = t
        .fetch_and_update("n", |v| Some(vec![v.unwrap()[0] + 1]))
        .unwrap();
    assert_eq!(old, Some(vec![1]));
    // Returning None removes.
    t.fetch_and_update("n", |_| None).unwrap();
    assert_eq!(t.get("n").unwrap(), None);
}

fn compare_and_swap_is_atomic_across_handles(b: &Backend) {
    let (s1, s2) = (b.open(), b.open());
    let (t1, t2) = (s1.nonces(), s2.nonces());
    assert_eq!(t1.compare_and_swap("k", None, Some(b"a")).unwrap(), Ok(()));
    assert_eq!(
        t2.compare_and_swap("k", None, Some(b"b")).unwrap(),
        Err(Some(b"a".to_vec()))
    );
    assert_eq!(
        t2.compare_and_swap("k", Some(b"x"), Some(b"b")).unwrap(),
        Err(Some(b"a".to_vec()))
    );
    assert_eq!(
        t2.compare_and_swap("k", Some(b"a"), Some(b"b")).unwrap(),
        Ok(())
    );
    assert_eq!(t1.compare_and_swap("k", Some(b"b"), None).unwrap(), Ok(()));
    assert_eq!(
        t1.compare_and_swap("k", Some(b"b"), None).unwrap(),
        Err(None)
    );
    // Racing claims of one key from two handles: exactly one wins each round.
    let stores = Arc::new([s1, s2]);
    for round in 0..20u32 {
        let key = round.to_be_bytes();
        let wins: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|i| {
                    let stores = stores.clone();
                    scope.spawn(move || {
                        let t = stores[i % 2].nonces();
                        usize::from(
                            t.compare_and_swap(key, None, Some(&[i as u8]))
                                .unwrap()
                                .is_ok(),
                        )
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(wins, 1, "round {round}");
    }
    // Increments from both handles are never lost.
    std::thread::scope(|scope| {
        for i in 0..4 {
            let stores = stores.clone();
            scope.spawn(move || {
                let t = stores[i % 2].meta();
                for _ in 0..25 {
                    t.fetch_and_update("counter", |v| {
                        let n = v.map_or(0, |v| u32::from_be_bytes(v.try_into().unwrap()));
                        Some((n + 1).to_be_bytes().to_vec())
                    })
                    .unwrap();
                }
            });
        }
    });
    let n = stores[0].meta().get("counter").unwrap().unwrap();
    assert_eq!(u32::from_be_bytes(n.try_into().unwrap()), 100);
}

fn writes_become_durable_through_one_group_commit(b: &Backend) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let store = b.open();
    rt.block_on(async {
        let flusher = store.start_flusher();
        let before = store.flushed_through();
        let mut set = tokio::task::JoinSet::new();
        for i in 0..50u32 {
            let s = store.clone();
            set.spawn(async move {
                s.envelopes().insert(i.to_be_bytes(), b"r").unwrap();
                s.durable().await.unwrap();
            });
        }
        while let Some(r) = set.join_next().await {
            r.unwrap();
        }
        assert!(store.flushed_through() > before);
        assert_eq!(store.fault(), None);
        flusher.abort();
    });
    store.flush().unwrap();
    assert_eq!(b.open().envelopes().len().unwrap(), 50);
}

fn snapshot_and_load_copy_every_table(b: &Backend) {
    let store = b.open();
    for (i, (_, t)) in store.trees().into_iter().enumerate() {
        for j in 0..3u8 {
            t.insert([i as u8, j], [j; 5]).unwrap();
        }
    }
    let snap = store.snapshot().unwrap();
    assert_eq!(snap.len(), store.trees().len());
    assert!(snap.iter().all(|(_, e)| e.len() >= 3), "{snap:?}");
    // Into an empty store of the same backend, and into the other backend.
    let (_keep, same) = b.fresh();
    let copy = backup::collect(&store).unwrap();
    backup::load(&copy, &same).unwrap();
    let other_backend = match b {
        Backend::Sled(..) => Backend::pg(),
        Backend::Pg(_) => Backend::sled(),
    };
    let other = other_backend.open();
    backup::load(&copy, &other).unwrap();
    for target in [&same, &other] {
        let got = target.snapshot().unwrap();
        for ((name, want), (got_name, got)) in snap.iter().zip(&got) {
            assert_eq!(name, got_name);
            // The load moves the generation in `meta` forward; every other
            // entry is the same.
            let strip = |e: &Vec<(Vec<u8>, Vec<u8>)>| -> Vec<(Vec<u8>, Vec<u8>)> {
                e.iter()
                    .filter(|(k, _)| *name != "meta" || k.first() == Some(&6))
                    .cloned()
                    .collect()
            };
            assert_eq!(strip(want), strip(got), "table {name}");
        }
    }
    // A store with data is refused.
    assert!(backup::load(&copy, &same).is_err());
}

fn registry_written_by_one_instance_is_read_by_another(b: &Backend) {
    let mk = || MasterKey::parse(&"5a".repeat(32)).unwrap();
    let one = Registry::open(b.open(), mk()).unwrap();
    let code = AgencyCode::parse("H37.DN.001").unwrap();
    let issued = one.add(code.clone(), "Sở Nội vụ", None).unwrap();
    // Added twice through two instances: the second is refused.
    let two = Registry::open(b.open(), mk()).unwrap();
    assert!(two.add(code.clone(), "again", None).is_err());
    let (entry, key) = two
        .by_key(&issued.access_key, crate::core::time::now_ms())
        .unwrap();
    assert_eq!(entry.agency.code, code);
    assert_eq!(key.secret, issued.secret);
}

fn audit_writers_on_two_instances_keep_one_chain(b: &Backend) {
    let (a, c) = (Audit::new(b.open()), Audit::new(b.open()));
    let ev = |i: u32| AuditEvent::admin("test", format!("T{i}"), "detail");
    let mut seqs = Vec::new();
    for i in 0..5 {
        seqs.push(a.append(ev(i)).unwrap());
        seqs.push(c.append(ev(10 + i)).unwrap());
    }
    assert_eq!(seqs, (1..=10).collect::<Vec<u64>>());
    let r = c.verify().unwrap();
    assert!(r.ok, "{r:?}");
    assert_eq!(r.last_seq, Some(10));
}

fn a_routing_claim_is_exclusive(b: &Backend) {
    let s2 = b.open();
    let (t1, t2) = (Tracking::new(b.open()), Tracking::new(s2.clone()));
    let from = AgencyCode::parse("H37.DN.001").unwrap();
    let now = crate::core::time::now_ms();
    let Claim::Mine {
        token: first,
        unfinished: false,
        record: None,
    } = t1.claim(&from, "m1", now).unwrap()
    else {
        panic!("a fresh envelope is claimed at once")
    };
    match t2.claim(&from, "m1", now).unwrap() {
        // Shared: another live instance routes it.
        Claim::Elsewhere { .. } => assert!(b.open().is_shared()),
        // One process: a marker it finds is its own, left unfinished.
        Claim::Mine {
            unfinished: true, ..
        } => assert!(!b.open().is_shared()),
        other => panic!("the first claim was lost: {other:?}"),
    }
    // Stale: routed again by the other.
    let later = now + crate::state::tracking::CLAIM_STALE_MS + 1;
    let Claim::Mine {
        token: second,
        unfinished: true,
        record: None,
    } = t2.claim(&from, "m1", later).unwrap()
    else {
        panic!("a stale claim is taken over")
    };
    // The first instance finishing late leaves the new owner's claim alone.
    t1.routed(&from, "m1", &first).unwrap();
    assert!(t1.is_routing(&from, "m1").unwrap());
    let mut rec = crate::state::tracking::EnvelopeRecord::for_test(now, "m1", vec![]);
    rec.from = from.clone();
    t2.put(&rec).unwrap();
    s2.share().unwrap();
    t2.routed(&from, "m1", &second).unwrap();
    // Sent with the next share or group commit.
    s2.share().unwrap();
    assert!(!t1.is_routing(&from, "m1").unwrap());
    // Claimed again (a copy sent later): the record routed to the end comes
    // with the claim.
    match t1.claim(&from, "m1", later).unwrap() {
        Claim::Mine {
            unfinished: false,
            record: Some(found),
            ..
        } => assert_eq!(*found, rec),
        other => panic!("the record comes with the claim: {other:?}"),
    }
}

fn insert_new_reading_reads_in_the_same_step(b: &Backend) {
    let (s1, s2) = (b.open(), b.open());
    let (claims, records) = (s1.routing(), s1.envelopes());
    records.put(b"k", b"written").unwrap();
    s1.share().unwrap();
    let got = claims
        .insert_new_reading(b"k", b"mine", &records, b"k")
        .unwrap();
    assert_eq!(got.inserted, Ok(()));
    assert_eq!(got.read, Some(Some(b"written".to_vec())));
    // Taken: the holder's value, and no read.
    let got = s2
        .routing()
        .insert_new_reading(b"k", b"theirs", &s2.envelopes(), b"k")
        .unwrap();
    assert_eq!(got.inserted, Err(Some(b"mine".to_vec())));
    assert_eq!(got.read, None);
    // An absent other key reads as absent; a value this handle staged and
    // did not send yet is what it reads.
    let got = claims
        .insert_new_reading(b"k2", b"mine", &records, b"none")
        .unwrap();
    assert_eq!((got.inserted, got.read), (Ok(()), Some(None)));
    records.put(b"k3", b"staged").unwrap();
    let got = claims
        .insert_new_reading(b"k3", b"mine", &records, b"k3")
        .unwrap();
    assert_eq!(got.read, Some(Some(b"staged".to_vec())));
    // Removed by another handle: free again, and the write it made before
    // removing it is read.
    s2.envelopes().put(b"k", b"rewritten").unwrap();
    s2.share().unwrap();
    assert_eq!(
        s2.routing()
            .compare_and_swap(b"k", Some(b"mine"), None)
            .unwrap(),
        Ok(())
    );
    let got = claims
        .insert_new_reading(b"k", b"again", &records, b"k")
        .unwrap();
    assert_eq!(got.inserted, Ok(()));
    assert_eq!(got.read, Some(Some(b"rewritten".to_vec())));
}

fn insert_pair_new_reading_does_both_inserts_and_the_read(b: &Backend) {
    let (s1, s2) = (b.open(), b.open());
    let (nonces, claims, records) = (s1.nonces(), s1.routing(), s1.envelopes());
    records.put(b"k", b"written").unwrap();
    s1.share().unwrap();
    let got = nonces
        .insert_pair_new_reading(b"n", b"first", &claims, b"k", b"mine", &records, b"k")
        .unwrap();
    assert_eq!(got.first, Ok(()));
    assert_eq!(got.then.inserted, Ok(()));
    assert_eq!(got.then.read, Some(Some(b"written".to_vec())));
    // Through another handle both are taken, each with its holder's value.
    let other = |n: &[u8], v: &[u8], k: &[u8], read: &[u8]| {
        s2.nonces()
            .insert_pair_new_reading(n, v, &s2.routing(), k, b"theirs", &s2.envelopes(), read)
            .unwrap()
    };
    let got = other(b"n", b"second", b"k", b"k");
    assert_eq!(got.first, Err(Some(b"first".to_vec())));
    assert_eq!(got.then.inserted, Err(Some(b"mine".to_vec())));
    assert_eq!(got.then.read, None);
    // The two inserts are independent: a taken first key does not stop the
    // second, nor a taken second key the first.
    let got = other(b"n", b"third", b"k2", b"none");
    assert_eq!(got.first, Err(Some(b"first".to_vec())));
    assert_eq!((got.then.inserted, got.then.read), (Ok(()), Some(None)));
    let got = other(b"n2", b"fourth", b"k", b"k");
    assert_eq!(got.first, Ok(()));
    assert_eq!(got.then.inserted, Err(Some(b"mine".to_vec())));
    assert_eq!(s1.nonces().get(b"n2").unwrap(), Some(b"fourth".to_vec()));
    // A value this handle staged is what it reads.
    records.put(b"k3", b"staged").unwrap();
    let got = nonces
        .insert_pair_new_reading(b"n3", b"x", &claims, b"k3", b"mine", &records, b"k3")
        .unwrap();
    assert_eq!(got.then.read, Some(Some(b"staged".to_vec())));
}

fn an_update_after_an_insert_runs_only_when_it_inserted(b: &Backend) {
    let (s1, s2) = (b.open(), b.open());
    s1.envelopes().put(b"r", b"1").unwrap();
    s1.share().unwrap();
    let append = |v: Option<&[u8]>, c: u8| v.map(|v| [v, &[c]].concat());
    // Inserted: the update runs (in the same statement on PostgreSQL).
    let (found, old) = s1
        .envelopes()
        .fetch_and_update_after_insert(&s1.nonces(), b"n1", b"a", b"r", |v| append(v, b'a'))
        .unwrap();
    assert_eq!((found, old), (Ok(()), Some(Some(b"1".to_vec()))));
    // Through another handle: the entry is there, nothing is updated.
    let (found, old) = s2
        .envelopes()
        .fetch_and_update_after_insert(&s2.nonces(), b"n1", b"b", b"r", |v| append(v, b'b'))
        .unwrap();
    assert_eq!((found, old), (Err(Some(b"a".to_vec())), None));
    // A value changed by another handle since this one wrote it: the
    // update runs again from what is there.
    s2.envelopes()
        .fetch_and_update(b"r", |v| append(v, b'x'))
        .unwrap();
    let (found, old) = s1
        .envelopes()
        .fetch_and_update_after_insert(&s1.nonces(), b"n2", b"c", b"r", |v| append(v, b'c'))
        .unwrap();
    assert_eq!((found, old), (Ok(()), Some(Some(b"1ax".to_vec()))));
    // No value to change: the insert alone, and the update sees none.
    let (found, old) = s1
        .envelopes()
        .fetch_and_update_after_insert(&s1.nonces(), b"n3", b"d", b"absent", |v| append(v, b'd'))
        .unwrap();
    assert_eq!((found, old), (Ok(()), Some(None)));
    assert_eq!(s2.envelopes().get(b"r").unwrap(), Some(b"1axc".to_vec()));
    assert_eq!(s2.nonces().get(b"n3").unwrap(), Some(b"d".to_vec()));
}

fn a_nonce_is_fresh_once_across_instances(b: &Backend) {
    let (n1, n2) = (Nonces::new(b.open()), Nonces::new(b.open()));
    let far = crate::core::time::now_ms() + 60_000;
    assert_eq!(
        n1.check_and_remember("AK1", "n", "m1", far, 0).unwrap(),
        NonceCheck::Fresh
    );
    assert_eq!(
        n2.check_and_remember("AK1", "n", "m2", far, 0).unwrap(),
        NonceCheck::Replay
    );
    assert_eq!(
        n2.check_and_remember("AK1", "n", "m1", far, 0).unwrap(),
        NonceCheck::SameMessage
    );
}

fn one_lease_holder_across_instances(b: &Backend) {
    // Random interleavings, each instance on its own handle.
    crate::state::lease::simulate_interleavings(|| b.open(), 0..3);
    // A clean handover between two handles.
    let t = 100_000_000;
    let (x, y) = (Lease::new(b.open(), "x"), Lease::new(b.open(), "y"));
    let first = x.tick(t).unwrap();
    let Role::Leader { term } = first else {
        panic!("{first:?}")
    };
    assert_eq!(
        y.tick(t + 1).unwrap(),
        Role::Follower {
            leader: Some("x".into())
        }
    );
    assert!(x.release(t + 2).unwrap());
    assert_eq!(y.tick(t + 3).unwrap(), Role::Leader { term: term + 1 });
    assert!(!x.tick(t + 4).unwrap().is_leader());
}

fn registry_refresh_brings_another_instances_changes(b: &Backend) {
    let mk = || MasterKey::parse(&"5a".repeat(32)).unwrap();
    let one = Registry::open(b.open(), mk()).unwrap();
    let two = Registry::open(b.open(), mk()).unwrap();
    let code = AgencyCode::parse("H37.DN.002").unwrap();
    one.add(code.clone(), "Sở Tư pháp", None).unwrap();
    assert!(two.get(&code).is_none());
    assert!(two.refresh().unwrap());
    assert!(two.get(&code).unwrap().agency.enabled);
    two.set_enabled(&code, false).unwrap();
    assert!(one.refresh().unwrap());
    assert!(!one.get(&code).unwrap().agency.enabled);
    assert!(!one.refresh().unwrap(), "once per change");
    one.remove(&code).unwrap();
    assert!(two.refresh().unwrap());
    assert!(two.get(&code).is_none());
}

fn instance_records_and_relayed_heartbeats_cross_instances(b: &Backend) {
    let now = crate::core::time::now_ms();
    let me = InstanceInfo {
        id: "hub-1".into(),
        host: "h1".into(),
        pid: 1,
        version: "0".into(),
        started_ms: now,
        seen_ms: now,
        admin_addr: "127.0.0.1:1".into(),
    };
    InstanceBook::new(b.open()).beat(&me, now).unwrap();
    let other = InstanceBook::new(b.open());
    assert_eq!(other.list(now).unwrap(), vec![me]);
    other.remove("hub-1").unwrap();
    assert!(InstanceBook::new(b.open()).list(now).unwrap().is_empty());

    let code = AgencyCode::parse("H37.DN.003").unwrap();
    let hb = Relayed {
        online: true,
        at_ms: now,
    };
    HeartbeatRelay::new(b.open()).put(&code, &hb).unwrap();
    let leader = HeartbeatRelay::new(b.open());
    assert_eq!(leader.take().unwrap(), vec![(code, hb)]);
    assert!(leader.take().unwrap().is_empty());
}

fn insert_all_new_is_all_or_nothing(b: &Backend) {
    let t = b.open().audit();
    let e = |k: u8, v: &str| (vec![k], v.as_bytes().to_vec());
    assert!(t.insert_all_new(&[]).unwrap());
    assert!(t.insert_all_new(&[e(1, "a"), e(2, "b")]).unwrap());
    // One key already there: nothing of the batch is inserted.
    assert!(!t
        .insert_all_new(&[e(3, "c"), e(2, "x"), e(4, "d")])
        .unwrap());
    assert_eq!(entries(t.iter()), vec![vec![1], vec![2]]);
    assert_eq!(t.get([2]).unwrap(), Some(b"b".to_vec()));
    // A key twice in one batch: nothing either.
    assert!(!t.insert_all_new(&[e(5, "e"), e(5, "f")]).unwrap());
    assert_eq!(t.len().unwrap(), 2);
    assert!(t.insert_all_new(&[e(3, "c"), e(4, "d")]).unwrap());
    assert_eq!(entries(t.iter()), vec![vec![1], vec![2], vec![3], vec![4]]);
    // Overlapping batches racing from two handles: one wins each round, and
    // the table holds all of the winner's batch and nothing of the loser's.
    let stores = Arc::new([b.open(), b.open()]);
    for round in 0..20u32 {
        let base = 1000 + round * 10;
        let won: Vec<(usize, bool)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..2)
                .map(|i| {
                    let stores = stores.clone();
                    scope.spawn(move || {
                        // Instance 0 takes base..base+3, instance 1 base+2..base+5.
                        let from = base + 2 * i as u32;
                        let batch: Vec<(Vec<u8>, Vec<u8>)> = (from..from + 3)
                            .map(|k| (k.to_be_bytes().to_vec(), vec![i as u8]))
                            .collect();
                        (i, stores[i].audit().insert_all_new(&batch).unwrap())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let winners: Vec<usize> = won.iter().filter(|w| w.1).map(|w| w.0).collect();
        assert_eq!(winners.len(), 1, "round {round}: {won:?}");
        let w = winners[0] as u32;
        let got: Vec<(Vec<u8>, Vec<u8>)> = t
            .range(base.to_be_bytes()..(base + 10).to_be_bytes())
            .map(|r| r.unwrap())
            .collect();
        let want: Vec<(Vec<u8>, Vec<u8>)> = (base + 2 * w..base + 2 * w + 3)
            .map(|k| (k.to_be_bytes().to_vec(), vec![w as u8]))
            .collect();
        assert_eq!(got, want, "round {round}");
    }
}

fn put_max_only_moves_forward(b: &Backend) {
    let t = b.open().meta();
    assert!(t.put_max("h", [0, 5]).unwrap(), "absent: written");
    assert!(!t.put_max("h", [0, 4]).unwrap());
    assert!(!t.put_max("h", [0, 5]).unwrap(), "equal: not written");
    assert_eq!(t.get("h").unwrap(), Some(vec![0, 5]));
    assert!(
        t.put_max("h", [0, 5, 0]).unwrap(),
        "a longer value with the same start is greater"
    );
    assert!(t.put_max("h", [1]).unwrap());
    assert!(!t.put_max("h", [0, 0xff, 0xff]).unwrap());
    assert_eq!(t.get("h").unwrap(), Some(vec![1]));
    // Many writers on two handles, in any order: the greatest value stays.
    let stores = Arc::new([b.open(), b.open()]);
    std::thread::scope(|scope| {
        for i in 0..4u64 {
            let stores = stores.clone();
            scope.spawn(move || {
                let t = stores[i as usize % 2].meta();
                for j in 0..25u64 {
                    // Interleaved, each writer's values rising and falling.
                    let v = if j % 2 == 0 { j * 4 + i } else { 100 - j };
                    t.put_max("m", v.to_be_bytes()).unwrap();
                }
            });
        }
    });
    let m = stores[0].meta().get("m").unwrap().unwrap();
    assert_eq!(u64::from_be_bytes(m.try_into().unwrap()), 99);
}

fn raise_only_moves_forward_and_is_read_back(b: &Backend) {
    let (s1, s2) = (b.open(), b.open());
    let t = s1.meta();
    t.raise("h", [0, 5]).unwrap();
    t.raise("h", [0, 4]).unwrap();
    // Read back by the handle that wrote it, before any share.
    assert_eq!(t.get("h").unwrap(), Some(vec![0, 5]));
    // Staged over each other: the greater stays.
    t.raise("h", [0, 9]).unwrap();
    t.raise("h", [0, 7]).unwrap();
    s1.share().unwrap();
    assert_eq!(s2.meta().get("h").unwrap(), Some(vec![0, 9]));
    // Another handle moved it further: a smaller raise leaves it there.
    s2.meta().put_max("h", [1]).unwrap();
    t.raise("h", [0, 0xff]).unwrap();
    s1.share().unwrap();
    assert_eq!(s2.meta().get("h").unwrap(), Some(vec![1]));
    // After a plain put of the same key, a raise judges against it.
    t.put("h", [0, 1]).unwrap();
    t.raise("h", [0, 2]).unwrap();
    assert_eq!(t.get("h").unwrap(), Some(vec![0, 2]));
    s1.share().unwrap();
    assert_eq!(s2.meta().get("h").unwrap(), Some(vec![0, 2]));
    // After a delete, a raise sets its value; after a greater put, the put
    // stays.
    t.delete("h").unwrap();
    t.raise("h", [0, 3]).unwrap();
    t.put("g", [9]).unwrap();
    t.raise("g", [1]).unwrap();
    s1.share().unwrap();
    assert_eq!(s2.meta().get("h").unwrap(), Some(vec![0, 3]));
    assert_eq!(s2.meta().get("g").unwrap(), Some(vec![9]));
}
