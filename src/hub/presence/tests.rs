//! Unit tests of the presence handle on one node.

use super::*;

fn ch(s: &str) -> ChannelName {
    ChannelName::parse(s).unwrap()
}

#[tokio::test]
async fn holds_join_and_leave_and_watchers_hear_it() {
    let p = Presence::new(PresenceConfig::default());
    let a = ch("room");
    let mut events = p.watch(&a);
    let held = p
        .hold(
            &a,
            ClientId::parse("ann").unwrap(),
            p.parse_info(r#"{"n":1}"#).unwrap(),
        )
        .await
        .unwrap();
    let second = p
        .hold(&a, ClientId::parse("ann").unwrap(), Info::empty())
        .await
        .unwrap();
    assert_eq!(p.members(&a).await.unwrap().len(), 1);
    assert_eq!(events.try_recv().unwrap().kind(), "join");
    drop(held);
    assert!(events.try_recv().is_err(), "a second tab still holds ann");
    drop(second);
    assert_eq!(events.try_recv().unwrap().kind(), "leave");
    assert!(p.members(&a).await.unwrap().is_empty());
    // A watcher that went away leaves nothing behind after a sweep.
    drop(events);
    p.expire(now_ms());
    assert!(p.inner.told().watchers.is_empty());
}

#[tokio::test]
async fn a_poll_lease_lapses_on_the_sweep() {
    let p = Presence::new(PresenceConfig {
        lapse: Duration::from_secs(5),
        ..PresenceConfig::default()
    });
    let a = ch("room");
    let pat = ClientId::parse("pat").unwrap();
    p.touch(&a, &pat, &Info::empty()).await.unwrap();
    let (since, v) = p.since(&a, None).await;
    assert!(matches!(since, Since::Snapshot(m) if m.len() == 1));
    assert_eq!(p.expire(now_ms()), 0);
    assert_eq!(p.expire(now_ms() + 5_001), 1);
    // The sweep that far on also forgot the changes of a channel nobody
    // polled for a lapse: the poller gets the (empty) list.
    let (since, _) = p.since(&a, Some(v)).await;
    assert!(matches!(since, Since::Snapshot(m) if m.is_empty()));
}

#[tokio::test]
async fn over_the_limit_is_refused_with_the_limit() {
    let p = Presence::new(PresenceConfig {
        max_members: 1,
        ..PresenceConfig::default()
    });
    let a = ch("room");
    let _x = p
        .hold(&a, ClientId::parse("x").unwrap(), Info::empty())
        .await
        .unwrap();
    let e = p
        .hold(&a, ClientId::parse("y").unwrap(), Info::empty())
        .await
        .unwrap_err();
    assert_eq!(e, PresenceError::Full(1));
    assert!(
        p.parse_info(&format!(r#"{{"a":"{}"}}"#, "x".repeat(600)))
            .is_err()
    );
}
