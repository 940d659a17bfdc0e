//! Inventory identity (issue 14 finding 6): a guest is identified by the platform its
//! verified endorsement certificate names, never by a report field the host controls.

mod common;

use attestation::snp::emulated::EmulatedSnpPlatform;
use common::*;
use reqwest::Method;
use serde_json::{json, Value};
use verifier::client::emulated::{SnpGuest, SNP_GUEST_POLICY};
use verifier::client::ClientError;
use verifier::crypto::jwe::TeeKeyPair;

fn masked_snp_guest() -> SnpGuest {
    let mut platform = EmulatedSnpPlatform::open(&emulated_dir()).expect("emulated platform");
    // The host sets MASK_CHIP_ID (SNP_SET_CONFIG): reports carry a zero CHIP_ID.
    platform.set_mask_chip_id(true);
    SnpGuest::new(platform, MEASUREMENT, SNP_GUEST_POLICY)
}

async fn guests(admin: &verifier::client::admin::AdminClient) -> Vec<Value> {
    admin
        .call(Method::GET, "/admin/v1/inventory", None)
        .await
        .unwrap()["guests"]
        .as_array()
        .unwrap()
        .clone()
}

/// The attack: revoke a guest, then re-attest the same guest on the same chip with
/// CHIP_ID masked. Before the fix it got the key under a fresh inventory entry keyed
/// by the all-zero CHIP_ID.
#[tokio::test(flavor = "multi_thread")]
async fn revoked_guest_with_masked_chip_id_is_refused() {
    let env = Env::new();
    let creds = bootstrap(&env);
    let server = start(&env, &[]);
    let admin = admin_client(&server, &creds);
    provision(&admin, "web").await;
    let client = kbs(&server);
    let key = TeeKeyPair::p256();
    client
        .fetch(&snp_guest(), &key, json!({}), RESOURCE)
        .await
        .expect("first release");
    let inv = guests(&admin).await;
    assert_eq!(inv.len(), 1);
    let chip_id = EmulatedSnpPlatform::open(&emulated_dir())
        .unwrap()
        .chip_id();
    // The platform id is the VCEK's hwID (equal to the unmasked CHIP_ID).
    assert_eq!(inv[0]["platform_id"], hex::encode(chip_id));
    let id = inv[0]["id"].as_str().unwrap().to_owned();
    admin
        .call(
            Method::PUT,
            &format!("/admin/v1/inventory/{id}/revocation"),
            Some(&json!({"revoked": true})),
        )
        .await
        .unwrap();

    let masked = masked_snp_guest();
    let err = client
        .fetch(&masked, &key, json!({}), RESOURCE)
        .await
        .expect_err("a revoked guest must not come back by masking CHIP_ID");
    assert!(
        matches!(err, ClientError::Status { status: 403, .. }),
        "{err}"
    );
    // No fresh, unrevoked entry for the same chip appeared.
    let inv = guests(&admin).await;
    assert_eq!(inv.len(), 1, "{inv:?}");
    assert_eq!(inv[0]["revoked"], true);

    // Restored, the masked guest is recognized as the same chip.
    admin
        .call(
            Method::PUT,
            &format!("/admin/v1/inventory/{id}/revocation"),
            Some(&json!({"revoked": false})),
        )
        .await
        .unwrap();
    client
        .fetch(&masked, &key, json!({}), RESOURCE)
        .await
        .expect("restored");
    let inv = guests(&admin).await;
    assert_eq!(inv.len(), 1, "{inv:?}");
    assert_eq!(inv[0]["attestations"], 2);
}

/// Revocation follows the guest (platform and measurement) to another workload that
/// its measurement also satisfies: the workload a guest names is host-controlled input.
#[tokio::test(flavor = "multi_thread")]
async fn revoked_guest_cannot_switch_workload() {
    let env = Env::new();
    let creds = bootstrap(&env);
    let server = start(&env, &[]);
    let admin = admin_client(&server, &creds);
    provision(&admin, "web").await;
    provision(&admin, "other").await;
    let client = kbs(&server);
    let key = TeeKeyPair::p256();
    client
        .fetch(&snp_guest(), &key, json!({"workload": "web"}), RESOURCE)
        .await
        .expect("first release");
    let inv = guests(&admin).await;
    let web = inv
        .iter()
        .find(|g| g["workload"] == "web")
        .expect("web entry");
    let id = web["id"].as_str().unwrap().to_owned();
    admin
        .call(
            Method::PUT,
            &format!("/admin/v1/inventory/{id}/revocation"),
            Some(&json!({"revoked": true})),
        )
        .await
        .unwrap();
    let err = client
        .fetch(&snp_guest(), &key, json!({"workload": "other"}), RESOURCE)
        .await
        .expect_err("revocation follows the guest to another workload");
    assert!(
        matches!(err, ClientError::Status { status: 403, .. }),
        "{err}"
    );
}

/// TDX guests are identified by their PCK certificate (platform instance id or PPID);
/// a revocation recorded before schema v5, under the FMSPC the inventory then used,
/// still refuses the guest.
#[tokio::test(flavor = "multi_thread")]
async fn tdx_identity_and_legacy_fmspc_revocation() {
    let env = Env::new();
    let creds = bootstrap(&env);
    let server = start(&env, &[]);
    let admin = admin_client(&server, &creds);
    provision(&admin, "web").await;
    let client = kbs(&server);
    let key = TeeKeyPair::p256();
    client
        .fetch(&tdx_guest(), &key, json!({}), RESOURCE)
        .await
        .expect("first release");
    let inv = guests(&admin).await;
    assert_eq!(inv.len(), 1);
    let id = inv[0]["platform_id"].as_str().unwrap();
    assert!(id.starts_with("tdx-platform:"), "{id}");

    let platform = attestation::tdx::emulated::EmulatedTdxPlatform::open(&emulated_dir())
        .expect("emulated TDX platform");
    let legacy = format!("fmspc:{}", hex::encode(platform.options().fmspc));
    let mut db = {
        use sqlx::Connection;
        sqlx::SqliteConnection::connect(&format!("sqlite://{}", env.database))
            .await
            .unwrap()
    };
    sqlx::query(
        "INSERT INTO inventory (id, workload, tee, platform_id, measurement, trust, first_seen, last_seen, attestations, revoked) \
         VALUES ('legacy-entry', 'web', 'tdx', $1, $2, 'insecure-emulated', 1, 1, 1, 1)",
    )
    .bind(&legacy)
    .bind(hex::encode(MEASUREMENT))
    .execute(&mut db)
    .await
    .unwrap();
    let err = client
        .fetch(&tdx_guest(), &key, json!({}), RESOURCE)
        .await
        .expect_err("a legacy revocation still applies");
    assert!(
        matches!(err, ClientError::Status { status: 403, .. }),
        "{err}"
    );
}
