//! Compare-and-swap on one key: the conditional writes pgwarden makes to
//! the cluster's keys (`failover`, `config`, `history`, `sync`, the
//! initialize key), each one transaction. A caller states what it read (the
//! key's revision) or that the key must be absent; the write happens only if
//! that is still true, so a change made meanwhile by another member, a
//! controller or an operator is never overwritten or deleted unseen.
//!
//! The leader key's, the controller key's and the initialize key's
//! transactions compare the value a member wrote and the lease it is bound
//! to; they are here too, so no other crate builds a raw transaction.

use etcd_client::{Compare, CompareOp, KeyValue, PutOptions, Txn, TxnOp, TxnOpResponse};

use crate::Etcd;

impl Etcd {
    /// Writes `value` to `key` iff the key's revision is still `revision`
    /// (`0`: the key is absent). Returns the store's revision after the
    /// write (the key's new revision), or `None` when the key had changed.
    pub async fn put_if_revision(
        &self,
        key: &str,
        value: impl Into<Vec<u8>>,
        revision: i64,
    ) -> Result<Option<i64>, etcd_client::Error> {
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, revision)])
            .and_then([TxnOp::put(key, value, None)]);
        let response = self.txn(txn).await?;
        Ok(response.succeeded().then(|| response.header().map_or(0, |h| h.revision())))
    }

    /// Deletes `key` iff its revision is still `revision`. Returns whether
    /// it was deleted (or, with `revision` 0, was absent).
    pub async fn delete_if_revision(&self, key: &str, revision: i64) -> Result<bool, etcd_client::Error> {
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, revision)])
            .and_then([TxnOp::delete(key, None)]);
        Ok(self.txn(txn).await?.succeeded())
    }

    /// Deletes `key` iff it still holds `value`. Returns whether it was
    /// deleted.
    pub async fn delete_if_value(&self, key: &str, value: &str) -> Result<bool, etcd_client::Error> {
        let txn = Txn::new().when([Compare::value(key, CompareOp::Equal, value)]).and_then([TxnOp::delete(key, None)]);
        Ok(self.txn(txn).await?.succeeded())
    }

    /// Creates `key` with `value` iff it is absent, bound to `lease` when
    /// given (it then disappears with the lease). Returns whether it was
    /// created.
    pub async fn create_if_absent(
        &self,
        key: &str,
        value: impl Into<Vec<u8>>,
        lease: Option<i64>,
    ) -> Result<bool, etcd_client::Error> {
        Ok(self.create_at_revision(key, value, lease).await?.is_some())
    }

    /// As [`Etcd::create_if_absent`], returning the store's revision of the
    /// write (the key's mod revision: every member's cluster view names the
    /// key by it) when it was created.
    pub async fn create_at_revision(
        &self,
        key: &str,
        value: impl Into<Vec<u8>>,
        lease: Option<i64>,
    ) -> Result<Option<i64>, etcd_client::Error> {
        let options = lease.map(|id| PutOptions::new().with_lease(id));
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value, options)]);
        let response = self.txn(txn).await?;
        Ok(response.succeeded().then(|| response.header().map_or(0, |h| h.revision())))
    }

    /// Creates `key` with `value` bound to `lease` iff it is absent;
    /// otherwise reads it, in the same transaction. `Ok(None)`: created;
    /// `Ok(Some(kv))`: the key as it was (`kv` is `None` only if etcd's
    /// answer lacked the read).
    pub async fn create_on_lease_or_read(
        &self,
        key: &str,
        value: &str,
        lease: i64,
    ) -> Result<Option<Option<KeyValue>>, etcd_client::Error> {
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value, Some(PutOptions::new().with_lease(lease)))])
            .or_else([TxnOp::get(key, None)]);
        let response = self.txn(txn).await?;
        if response.succeeded() {
            return Ok(None);
        }
        Ok(Some(response.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(get) => get.kvs().first().cloned(),
            _ => None,
        })))
    }

    /// Whether `key` holds `value` bound to `lease` (one transaction with no
    /// operation: a linearizable read of both).
    pub async fn holds_on_lease(&self, key: &str, value: &str, lease: i64) -> Result<bool, etcd_client::Error> {
        let txn = Txn::new()
            .when([Compare::value(key, CompareOp::Equal, value), Compare::lease(key, CompareOp::Equal, lease)]);
        Ok(self.txn(txn).await?.succeeded())
    }

    /// Deletes `key` iff it holds `value` bound to `lease`. Returns whether
    /// it was deleted.
    pub async fn delete_if_on_lease(&self, key: &str, value: &str, lease: i64) -> Result<bool, etcd_client::Error> {
        let txn = Txn::new()
            .when([Compare::value(key, CompareOp::Equal, value), Compare::lease(key, CompareOp::Equal, lease)])
            .and_then([TxnOp::delete(key, None)]);
        Ok(self.txn(txn).await?.succeeded())
    }

    /// Writes `value` to `key` iff it holds `expected`, bound to `lease`
    /// when given. Returns whether it was written.
    pub async fn put_if_value(
        &self,
        key: &str,
        expected: &str,
        value: &str,
        lease: Option<i64>,
    ) -> Result<bool, etcd_client::Error> {
        let options = lease.map(|id| PutOptions::new().with_lease(id));
        let txn = Txn::new()
            .when([Compare::value(key, CompareOp::Equal, expected)])
            .and_then([TxnOp::put(key, value, options)]);
        Ok(self.txn(txn).await?.succeeded())
    }

    /// Creates every `(key, value)` iff none of the keys exists, in one
    /// transaction. Returns whether they were created.
    pub async fn create_all_if_absent(&self, keys: &[(String, String)]) -> Result<bool, etcd_client::Error> {
        let compares: Vec<Compare> =
            keys.iter().map(|(key, _)| Compare::create_revision(key.as_str(), CompareOp::Equal, 0)).collect();
        let puts: Vec<TxnOp> = keys.iter().map(|(key, value)| TxnOp::put(key.as_str(), value.as_str(), None)).collect();
        Ok(self.txn(Txn::new().when(compares).and_then(puts)).await?.succeeded())
    }
}
