//! Offline bundles: `cvm-verifier collateral export` writes cached (or freshly fetched)
//! items to a JSON file; `collateral import` loads one into an air-gapped verifier's
//! database. Every imported item is checked like a fetched response (shape, issuer
//! chain, expiry read from the item itself, never from the bundle's fields); its
//! authenticity is checked at use, as for any collateral.

use serde::{Deserialize, Serialize};

use super::{list_items, store_item, CollateralError, Item, ItemKey};
use crate::db::Db;

/// The bundle format tag.
pub const FORMAT: &str = "cvm-collateral-bundle/1";

/// An export bundle.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    /// [`FORMAT`].
    pub format: String,
    /// When it was written (Unix seconds).
    pub created_at: i64,
    /// The items.
    pub items: Vec<Item>,
}

/// Bundle errors.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// Not JSON of the bundle format.
    #[error("the file is not a collateral bundle")]
    Json(#[source] serde_json::Error),
    /// Another format version.
    #[error("unsupported bundle format `{0}` (expected {FORMAT})")]
    Format(String),
    /// An item is unusable.
    #[error("bundle item {key} is unusable")]
    Item {
        /// The item key.
        key: String,
        /// The cause.
        #[source]
        source: CollateralError,
    },
    /// The database failed.
    #[error("the collateral cache failed")]
    Cache(#[source] CollateralError),
}

/// A bundle of every cached item.
pub async fn export_cached(db: &Db) -> Result<Bundle, BundleError> {
    Ok(Bundle {
        format: FORMAT.into(),
        created_at: crate::db::now(),
        items: list_items(db).await.map_err(BundleError::Cache)?,
    })
}

/// Checks every item of `json` and stores it (an item already cached with a later
/// expiry is kept). Returns the number of items imported.
pub async fn import(db: &Db, json: &[u8]) -> Result<usize, BundleError> {
    let bundle: Bundle = serde_json::from_slice(json).map_err(BundleError::Json)?;
    if bundle.format != FORMAT {
        return Err(BundleError::Format(bundle.format));
    }
    let mut checked = Vec::with_capacity(bundle.items.len());
    for item in bundle.items {
        let err = |source| BundleError::Item {
            key: item.key.clone(),
            source,
        };
        let key: ItemKey = item.key.parse().map_err(err)?;
        let (body, expires_at) = if item.body.is_empty() && matches!(key, ItemKey::AmdCrl(_)) {
            // "The KDS publishes no CRL": an observation, not a signed item, so the
            // bundle's own times are not trusted (a far-future one would pin the cache):
            // it counts from the import, for NO_CRL_TTL at most. It is only ever used
            // by a verifier configured with `amd_crl_optional`.
            let until = crate::db::now().saturating_add(super::NO_CRL_TTL);
            (Vec::new(), until)
        } else {
            key.check(&item.body, item.issuer_chain.as_deref())
                .map_err(err)?
        };
        checked.push(Item {
            key: key.to_string(),
            body,
            expires_at,
            ..item
        });
    }
    for item in &checked {
        store_item(db, item).await.map_err(BundleError::Cache)?;
    }
    Ok(checked.len())
}
