//! The admin API client behind `cvm-verifier admin …`.

use reqwest::Method;
use serde_json::Value;
use zeroize::Zeroizing;

use super::{check, ClientError};
use crate::service::admin::TOTP_HEADER;

/// An authenticated admin-plane client.
pub struct AdminClient {
    http: reqwest::Client,
    base: String,
    token: Zeroizing<String>,
    totp: Option<Totp>,
}

/// Where the TOTP code comes from.
enum Totp {
    /// A fixed code.
    Code(Zeroizing<String>),
    /// A base32 secret: the current code is computed for each request.
    Secret(Zeroizing<String>),
}

impl std::fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AdminClient({})", self.base)
    }
}

impl AdminClient {
    /// A client of `base` with an API token and, for admins, a TOTP code.
    pub fn new(
        http: reqwest::Client,
        base: &str,
        token: Zeroizing<String>,
        totp: Option<Zeroizing<String>>,
    ) -> Self {
        Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token,
            totp: totp.map(Totp::Code),
        }
    }

    /// A client that computes the current TOTP code from `secret` (base32) per request.
    pub fn with_totp_secret(
        http: reqwest::Client,
        base: &str,
        token: Zeroizing<String>,
        secret: Zeroizing<String>,
    ) -> Self {
        Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token,
            totp: Some(Totp::Secret(secret)),
        }
    }

    /// Sends a request to `path` (below the base URL); returns the JSON answer (`null`
    /// for empty bodies).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(self.token.as_str());
        match &self.totp {
            Some(Totp::Code(code)) => req = req.header(TOTP_HEADER, code.as_str()),
            Some(Totp::Secret(secret)) => {
                let at = u64::try_from(crate::db::now()).unwrap_or(0);
                let code = crate::store::users::totp_code(secret, at)
                    .ok_or(ClientError::Protocol("the TOTP secret is not base32"))?;
                req = req.header(TOTP_HEADER, code);
            }
            None => {}
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = check(req.send().await.map_err(ClientError::Http)?).await?;
        let bytes = resp.bytes().await.map_err(ClientError::Http)?;
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|_| ClientError::Protocol("the answer is not JSON"))
    }
}
