//! Watching a key or a prefix, with events in this crate's vocabulary.

use dcs::Etcd;
use etcd_client::{EventType, WatchOptions, WatchStream};

use crate::ElectionError;

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Put { key: String, value: Vec<u8>, lease: i64, mod_revision: i64 },
    Delete { key: String, mod_revision: i64 },
}

/// An open watch.
pub struct Watcher {
    stream: WatchStream,
}

/// Watches `key` (or every key under it with `prefix`), starting after
/// `after_revision` when given, so no change between a read and the watch is missed.
pub async fn watch(
    etcd: &Etcd,
    key: &str,
    prefix: bool,
    after_revision: Option<i64>,
) -> Result<Watcher, ElectionError> {
    let mut options = WatchOptions::new().with_prev_key();
    if prefix {
        options = options.with_prefix();
    }
    if let Some(revision) = after_revision {
        options = options.with_start_revision(revision + 1);
    }
    let (endpoint, mut client) = etcd.client().await?;
    match client.watch(key, Some(options)).await {
        Ok(stream) => Ok(Watcher { stream }),
        Err(e) => {
            etcd.report_failure(endpoint);
            Err(e.into())
        }
    }
}

impl Watcher {
    /// The next batch of events; `Ok(None)` when etcd closed the watch (the
    /// caller re-reads and watches again).
    pub async fn next(&mut self) -> Result<Option<Vec<WatchEvent>>, ElectionError> {
        loop {
            let Some(response) = self.stream.message().await? else {
                return Ok(None);
            };
            if response.canceled() {
                return Ok(None);
            }
            if response.events().is_empty() {
                continue;
            }
            let events = response
                .events()
                .iter()
                .filter_map(|event| {
                    let kv = event.kv()?;
                    let key = String::from_utf8_lossy(kv.key()).into_owned();
                    Some(match event.event_type() {
                        EventType::Put => WatchEvent::Put {
                            key,
                            value: kv.value().to_vec(),
                            lease: kv.lease(),
                            mod_revision: kv.mod_revision(),
                        },
                        EventType::Delete => WatchEvent::Delete { key, mod_revision: kv.mod_revision() },
                    })
                })
                .collect();
            return Ok(Some(events));
        }
    }
}
