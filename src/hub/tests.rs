//! Hub tests without sockets.

use std::time::Duration;

use super::*;

fn hub(history: usize) -> Hub {
    Hub::new(HubConfig {
        history,
        ..HubConfig::default()
    })
}

fn name(s: &str) -> ChannelName {
    ChannelName::parse(s).unwrap()
}

fn data(i: u64) -> Data {
    Data::parse(i.to_string().as_bytes(), 64).unwrap()
}

async fn offsets_until(sub: &mut Subscription, last: u64) -> Vec<u64> {
    let mut seen = Vec::new();
    while seen.last() != Some(&last) {
        match tokio::time::timeout(Duration::from_secs(10), sub.next()).await {
            Ok(Event::Message(m)) => seen.push(m.offset()),
            other => panic!("unexpected {other:?} after {seen:?}"),
        }
    }
    seen
}

#[tokio::test]
async fn publish_numbers_and_subscribe_replays_then_goes_live() {
    let hub = hub(100);
    let c = name("c");
    for i in 0..3 {
        let p = hub.publish(&c, &data(i)).await.unwrap();
        assert_eq!(p.offset, i + 1);
    }
    let mut sub = hub.subscribe(&c, &Position::since(1)).await.unwrap();
    assert_eq!(sub.head(), 3);
    hub.publish(&c, &data(9)).await.unwrap();
    assert_eq!(offsets_until(&mut sub, 4).await, vec![2, 3, 4]);
    assert!(sub.try_next().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribing_while_publishers_race_has_no_gap_and_no_duplicate() {
    const PUBLISHERS: u64 = 4;
    const EACH: u64 = 250;
    let total = PUBLISHERS * EACH;
    let hub = hub(total as usize);
    let c = name("race");
    let mut tasks = Vec::new();
    for _ in 0..PUBLISHERS {
        let hub = hub.clone();
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..EACH {
                hub.publish(&c, &data(i)).await.unwrap();
                if i % 16 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    // Subscribers join at arbitrary points, some replaying, some live.
    let mut subs = Vec::new();
    for i in 0..40u64 {
        let pos = if i % 2 == 0 {
            Position::since(0)
        } else {
            Position::live()
        };
        let sub = hub.subscribe(&c, &pos).await.unwrap();
        subs.push(tokio::spawn(async move {
            let mut sub = sub;
            let first = sub.cursor() + 1;
            let got = offsets_until(&mut sub, total).await;
            assert_eq!(got, (first..=total).collect::<Vec<_>>(), "gap or duplicate");
            (i, first)
        }));
        tokio::task::yield_now().await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    for s in subs {
        let (i, first) = s.await.unwrap();
        if i % 2 == 0 {
            assert_eq!(first, 1, "a since=0 subscriber must replay everything");
        }
    }
}

#[tokio::test]
async fn old_position_is_truncated_and_stale_epoch_too() {
    let hub = hub(3);
    let c = name("t");
    let mut epoch = None;
    for i in 0..5 {
        epoch = Some(hub.publish(&c, &data(i)).await.unwrap().epoch);
    }
    let epoch = epoch.unwrap();
    let mut sub = hub.subscribe(&c, &Position::since(1)).await.unwrap();
    match sub.next().await {
        Event::Truncated(t) => assert_eq!((t.oldest, t.epoch.clone()), (3, epoch.clone())),
        other => panic!("{other:?}"),
    }
    assert_eq!(offsets_until(&mut sub, 5).await, vec![3, 4, 5]);

    let pos = Position {
        since: Some(4),
        epoch: Some("not-the-epoch".into()),
    };
    let page = hub.read(&c, &pos, 10).await.unwrap();
    assert_eq!(page.truncated.unwrap().oldest, 3);
    assert_eq!(page.messages.len(), 3);
    assert_eq!(page.next, 5);
}

#[tokio::test]
async fn a_slow_subscriber_lags_and_can_resume() {
    let hub = hub(4);
    let c = name("slow");
    let mut sub = hub.subscribe(&c, &Position::live()).await.unwrap();
    hub.publish(&c, &data(0)).await.unwrap();
    assert!(matches!(sub.next().await, Event::Message(m) if m.offset() == 1));
    for i in 0..10 {
        hub.publish(&c, &data(i)).await.unwrap();
    }
    assert!(matches!(sub.next().await, Event::Lagged { last: 1 }));
    assert!(matches!(sub.try_next(), Some(Event::Lagged { last: 1 })));
    // Resuming from the last offset seen tells of the gap, then continues.
    let mut again = hub.subscribe(&c, &Position::since(1)).await.unwrap();
    assert!(matches!(again.next().await, Event::Truncated(t) if t.oldest == 8));
    assert_eq!(offsets_until(&mut again, 11).await, vec![8, 9, 10, 11]);
}

#[tokio::test]
async fn idle_channels_are_evicted_and_come_back_with_a_new_epoch() {
    let hub = Hub::new(HubConfig {
        idle_ttl: Duration::from_secs(60),
        ..HubConfig::default()
    });
    let (a, b) = (name("a"), name("b"));
    let old = hub.publish(&a, &data(1)).await.unwrap();
    let held = hub.subscribe(&b, &Position::live()).await.unwrap();
    assert_eq!(hub.sweep(now_ms()), 0, "nothing is idle yet");
    assert_eq!(
        hub.sweep(now_ms() + 61_000),
        1,
        "only the unsubscribed one goes"
    );
    assert_eq!(hub.channel_count(), 1);
    drop(held);

    let new = hub.publish(&a, &data(2)).await.unwrap();
    assert_eq!(new.offset, 1);
    assert_ne!(new.epoch, old.epoch);
    let pos = Position {
        since: Some(1),
        epoch: Some(old.epoch.as_str().into()),
    };
    let page = hub.read(&a, &pos, 10).await.unwrap();
    assert!(page.truncated.is_some(), "a stale epoch must be announced");
    assert_eq!(page.messages.len(), 1);
}

#[tokio::test]
async fn channel_limit_is_enforced() {
    let hub = Hub::new(HubConfig {
        max_channels: 2,
        ..HubConfig::default()
    });
    hub.publish(&name("a"), &data(0)).await.unwrap();
    hub.publish(&name("b"), &data(0)).await.unwrap();
    assert_eq!(
        hub.publish(&name("c"), &data(0)).await,
        Err(HubError::TooManyChannels(2))
    );
    hub.publish(&name("a"), &data(0)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn long_poll_waits_for_a_message_or_the_deadline() {
    let hub = hub(10);
    let c = name("lp");
    // Nothing arrives: an empty page after the wait, positioned at the head.
    let page = hub
        .read_wait(&c, &Position::live(), 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(page.messages.is_empty());
    assert_eq!(page.next, 0);

    let waiter = {
        let hub = hub.clone();
        let c = c.clone();
        tokio::spawn(async move {
            hub.read_wait(&c, &Position::since(0), 10, Duration::from_secs(30))
                .await
        })
    };
    tokio::task::yield_now().await;
    hub.publish(&c, &data(5)).await.unwrap();
    let page = waiter.await.unwrap().unwrap();
    assert_eq!(page.messages.len(), 1);
    assert_eq!(page.next, 1);
}
