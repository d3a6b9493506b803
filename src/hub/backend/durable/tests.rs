//! The durable backend without sockets: reopen, damage, group commit,
//! eviction.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::store::FILE;
use crate::hub::backend::Backend;
use crate::hub::{
    BackendConfig, BackendError, ChannelName, Fsync, Hub, HubConfig, Position, now_ms,
};
use crate::protocol::Data;

fn dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ladder-durable-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn cfg(dir: &Path, history: usize, fsync: Fsync) -> HubConfig {
    HubConfig {
        history,
        idle_ttl: Duration::from_secs(60),
        backend: BackendConfig::Durable {
            dir: dir.to_owned(),
            fsync,
            group_commit: Duration::from_millis(2),
        },
        ..HubConfig::default()
    }
}

fn name(s: &str) -> ChannelName {
    ChannelName::parse(s).unwrap()
}

fn data(i: u64) -> Data {
    Data::parse(format!("{{\"i\":{i}}}").as_bytes(), 64).unwrap()
}

fn commits(hub: &Hub) -> u64 {
    match &hub.inner.backend {
        Backend::Durable(d) => d.commits(),
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn reopening_continues_offsets_epoch_and_history() {
    let d = dir("reopen");
    let c = name("c");
    let hub = Hub::open(cfg(&d, 3, Fsync::PerPublish)).await.unwrap();
    let mut epoch = None;
    for i in 0..5 {
        let p = hub.publish(&c, &data(i)).await.unwrap();
        assert_eq!(p.offset, i + 1);
        epoch = Some(p.epoch);
    }
    let epoch = epoch.unwrap();
    hub.close().await;
    drop(hub);

    let hub = Hub::open(cfg(&d, 3, Fsync::Group)).await.unwrap();
    let pos = Position {
        since: Some(2),
        epoch: Some(epoch.as_str().into()),
    };
    let page = hub.read(&c, &pos, 10).await.unwrap();
    assert_eq!(page.epoch, epoch, "the epoch survives a restart");
    assert!(
        page.truncated.is_none(),
        "resuming inside the window is not a gap"
    );
    let got: Vec<_> = page
        .messages
        .iter()
        .map(|m| (m.offset(), m.json().clone()))
        .collect();
    assert_eq!(got.len(), 3);
    assert_eq!(got[0].0, 3);
    assert!(
        std::str::from_utf8(&got[2].1)
            .unwrap()
            .contains(r#""data":{"i":4}"#)
    );
    let p = hub.publish(&c, &data(5)).await.unwrap();
    assert_eq!((p.offset, p.epoch), (6, epoch));
    hub.close().await;
}

#[tokio::test]
async fn a_second_process_cannot_open_the_same_directory() {
    let d = dir("locked");
    let hub = Hub::open(cfg(&d, 3, Fsync::Group)).await.unwrap();
    let again = Hub::open(cfg(&d, 3, Fsync::Group)).await;
    assert!(matches!(again, Err(BackendError::Open(m)) if m.contains("in use")));
    hub.close().await;
}

#[tokio::test]
async fn damaged_files_are_refused() {
    for (tag, damage) in [
        (
            "truncated",
            (|b: &mut Vec<u8>| b.truncate(b.len() / 3)) as fn(&mut Vec<u8>),
        ),
        ("header", |b: &mut Vec<u8>| b[..64].fill(0x5a)),
        ("garbage", |b: &mut Vec<u8>| *b = vec![7; 4096]),
    ] {
        let d = dir(tag);
        let hub = Hub::open(cfg(&d, 100, Fsync::Group)).await.unwrap();
        for i in 0..50 {
            hub.publish(&name("c"), &data(i)).await.unwrap();
        }
        hub.close().await;
        drop(hub);
        let file = d.join(FILE);
        let mut bytes = std::fs::read(&file).unwrap();
        damage(&mut bytes);
        std::fs::write(&file, &bytes).unwrap();
        match Hub::open(cfg(&d, 100, Fsync::Group)).await {
            Err(BackendError::Corrupt { path, detail }) => {
                assert_eq!(path, file, "{tag}");
                assert!(!detail.is_empty());
            }
            other => panic!("{tag}: expected a corruption error, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commit_batches_concurrent_publishes() {
    let d = dir("group");
    let hub = Hub::open(cfg(&d, 1000, Fsync::Group)).await.unwrap();
    let before = commits(&hub);
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let hub = hub.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                hub.publish(&name(&format!("g{}", t % 2)), &data(i))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let used = commits(&hub) - before;
    assert!(used < 200, "200 publishes took {used} commits");
    let page = hub
        .read(&name("g0"), &Position::since(0), 1000)
        .await
        .unwrap();
    let offsets: Vec<u64> = page.messages.iter().map(|m| m.offset()).collect();
    assert_eq!(offsets, (1..=100).collect::<Vec<_>>());
    hub.close().await;
}

#[tokio::test]
async fn eviction_drops_the_cache_but_not_the_epoch() {
    let d = dir("evict");
    let hub = Hub::open(cfg(&d, 10, Fsync::Group)).await.unwrap();
    let c = name("e");
    let first = hub.publish(&c, &data(1)).await.unwrap();
    assert_eq!(hub.sweep(now_ms() + 61_000), 1);
    assert_eq!(hub.channel_count(), 0);
    let second = hub.publish(&c, &data(2)).await.unwrap();
    assert_eq!((second.offset, &second.epoch), (2, &first.epoch));
    let page = hub.read(&c, &Position::since(0), 10).await.unwrap();
    assert_eq!(page.messages.len(), 2);
    assert!(page.truncated.is_none());
    hub.close().await;
    assert!(
        hub.publish(&c, &data(3)).await.is_err(),
        "closed means closed"
    );
}
