//! Offline bundles: `cvm-verifier collateral export` writes cached (or freshly fetched)
//! items to a JSON file; `collateral import` loads one into an air-gapped verifier's
//! database. Every imported item is checked exactly like a fetched response before it
//! enters the cache: shape, expiry read from the item itself (never from the bundle's
//! fields), and authenticity ([`super::auth`]: chain to AMD's pinned ARKs / Intel's
//! root CA, or the given emulated anchors, and signatures). One forged item refuses
//! the whole bundle, naming the item; nothing of it is stored.

use serde::{Deserialize, Serialize};

use super::{list_items, store_item, Anchors, CollateralError, Item, ItemKey};
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

/// [`import_with`] against the genuine roots only (AMD's pinned ARKs, Intel's root CA).
pub async fn import(db: &Db, json: &[u8]) -> Result<usize, BundleError> {
    let anchors = Anchors::genuine().map_err(BundleError::Cache)?;
    import_with(db, json, &anchors).await
}

/// Checks every item of `json` (shape, expiry, authenticity against `anchors`) and
/// stores them all, or none if one fails (an item already cached with a later expiry
/// is kept). Returns the number of items imported.
pub async fn import_with(db: &Db, json: &[u8], anchors: &Anchors) -> Result<usize, BundleError> {
    let mut bundle: Bundle = serde_json::from_slice(json).map_err(BundleError::Json)?;
    if bundle.format != FORMAT {
        return Err(BundleError::Format(bundle.format));
    }
    // ASK/ARK chains first: their ASKs authenticate the bundle's VCEKs.
    bundle
        .items
        .sort_by_key(|i| !i.key.ends_with("/cert_chain"));
    let mut asks = Vec::new();
    let mut chains = std::collections::HashMap::new();
    let mut checked = Vec::with_capacity(bundle.items.len());
    for item in bundle.items {
        let err = |source| BundleError::Item {
            key: item.key.clone(),
            source,
        };
        let key: ItemKey = item.key.parse().map_err(err)?;
        let no_crl = matches!(key, ItemKey::AmdCrl(_) | ItemKey::VlekCrl(_));
        let (body, expires_at) = if item.body.is_empty() && no_crl {
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
        anchors
            .verify(&key, &body, item.issuer_chain.as_deref(), &asks)
            .map_err(err)?;
        if let ItemKey::AmdCertChain(product) = key {
            asks.extend(anchors.chain_asks(&body).unwrap_or_default());
            chains.insert(product, body.clone());
        }
        // A product's CRL is bound to the bundle's chain of that product (auth.rs).
        if let ItemKey::AmdCrl(product) | ItemKey::VlekCrl(product) = key {
            if !body.is_empty() {
                let chain = chains.get(&product).ok_or_else(|| {
                    err(CollateralError::Unauthentic {
                        what: key.what(),
                        detail: format!(
                            "the bundle has no {product} ASK/ARK chain to bind the CRL to"
                        ),
                    })
                })?;
                anchors.crl_of_chain(&key, &body, chain).map_err(err)?;
            }
        }
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
