//! Running `nft`: a generated script goes to `nft -f -` as one transaction (all of it
//! applies or none), and counters and tables are read back with `nft -j`.
//!
//! `nft` (nftables 1.0) rather than a netlink crate: the script is the reviewable
//! artefact (`cvm net show` prints it, the golden test pins it), `nft -f` gives the
//! atomic replace for free, and no netlink library in the dependency tree earns the
//! extra unsafe-adjacent surface for a handful of calls per VM lifetime.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

use super::ruleset::COUNTERS;
use super::Counts;

/// Why an `nft` call failed.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// `nft` could not be started.
    #[error("cannot run {0} (install nftables; `scripts/setup` does)")]
    Spawn(PathBuf, #[source] std::io::Error),
    /// `nft` refused the script or the request.
    #[error("nft {what} failed: {stderr}")]
    Failed {
        /// What was asked.
        what: String,
        /// nft's message.
        stderr: String,
    },
    /// `nft -j` printed something that is not its JSON.
    #[error("nft printed output that is not its JSON schema")]
    Json(#[source] serde_json::Error),
}

/// The `nft` binary: `/usr/sbin/nft` ([`DEFAULT_NFT`]), or `$CVM_NFT` as an explicit
/// override, which must be an absolute path (never a lookup in `PATH`, which whoever
/// runs `cvm` could steer).
#[derive(Debug, Clone)]
pub struct Nft {
    binary: PathBuf,
}

/// Where `nft` is.
pub const DEFAULT_NFT: &str = "/usr/sbin/nft";

impl Default for Nft {
    fn default() -> Self {
        Self::from_override(std::env::var_os("CVM_NFT"))
    }
}

impl Nft {
    /// The binary for the override `o` (`$CVM_NFT`): an absolute path, else the default.
    fn from_override(o: Option<std::ffi::OsString>) -> Self {
        let binary = match o.map(PathBuf::from) {
            Some(p) if p.is_absolute() => p,
            Some(p) => {
                tracing::warn!(path = %p.display(), "ignoring CVM_NFT: not an absolute path; using {DEFAULT_NFT}");
                PathBuf::from(DEFAULT_NFT)
            }
            None => PathBuf::from(DEFAULT_NFT),
        };
        Self { binary }
    }
}

impl Nft {
    /// Another `nft` binary. (tests)
    #[cfg(test)]
    pub fn with_binary(binary: PathBuf) -> Self {
        Self { binary }
    }

    fn run(&self, args: &[&str], stdin: Option<&str>, what: &str) -> Result<String, NftError> {
        let mut cmd = Command::new(&self.binary);
        cmd.args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        let mut child = cmd
            .spawn()
            .map_err(|e| NftError::Spawn(self.binary.clone(), e))?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A failed write shows up as nft's own error below.
            let _ = pipe.write_all(text.as_bytes());
        }
        let out = child
            .wait_with_output()
            .map_err(|e| NftError::Spawn(self.binary.clone(), e))?;
        if !out.status.success() {
            return Err(NftError::Failed {
                what: what.to_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Applies `script` atomically (`nft -f -`).
    pub fn apply(&self, script: &str) -> Result<(), NftError> {
        self.run(&["-f", "-"], Some(script), "-f (apply the policy)")
            .map(drop)
    }

    /// Checks `script` without applying it (`nft -c -f -`).
    pub fn check(&self, script: &str) -> Result<(), NftError> {
        self.run(&["-c", "-f", "-"], Some(script), "-c -f (check the policy)")
            .map(drop)
    }

    /// The names of the netdev tables.
    pub fn netdev_tables(&self) -> Result<Vec<String>, NftError> {
        let out = self.run(&["-j", "list", "tables", "netdev"], None, "list tables")?;
        let v: Value = serde_json::from_str(&out).map_err(NftError::Json)?;
        Ok(items(&v, "table")
            .filter_map(|t| t.get("name").and_then(Value::as_str).map(str::to_owned))
            .collect())
    }

    /// The comment of the netdev table `table` (`None`: it has none). nft 1.0's JSON
    /// omits table comments, so this reads the first line of the text listing after the
    /// table's header, where nft prints the table's comment.
    pub fn table_comment(&self, table: &str) -> Result<Option<String>, NftError> {
        let out = self.run(
            &["-t", "list", "table", "netdev", table],
            None,
            "list table",
        )?;
        let mut lines = out.lines().map(str::trim).filter(|l| !l.is_empty());
        let header = format!("table netdev {table} {{");
        if lines.next() != Some(header.as_str()) {
            return Ok(None);
        }
        Ok(lines
            .next()
            .and_then(|l| l.strip_prefix("comment \""))
            .and_then(|l| l.strip_suffix('"'))
            .map(str::to_owned))
    }

    /// The packet counts of `table`'s named counters.
    pub fn counts(&self, table: &str) -> Result<Counts, NftError> {
        let out = self.run(
            &["-j", "list", "counters", "table", "netdev", table],
            None,
            "list counters",
        )?;
        let v: Value = serde_json::from_str(&out).map_err(NftError::Json)?;
        let mut c = Counts::default();
        for item in items(&v, "counter") {
            let name = item.get("name").and_then(Value::as_str).unwrap_or_default();
            let packets = item.get("packets").and_then(Value::as_u64).unwrap_or(0);
            if let Some(i) = COUNTERS.iter().position(|n| *n == name) {
                c.0[i] = packets;
            }
        }
        Ok(c)
    }
}

/// The objects of kind `kind` in an `nft -j` answer (`{"nftables": [{kind: {...}}]}`).
fn items<'a>(v: &'a Value, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    v.get("nftables")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(move |o| o.get(kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Red-team info: `nft` came from `PATH`; it is now an absolute path, and a
    /// relative override is ignored.
    #[test]
    fn nft_is_pinned_to_an_absolute_path() {
        assert_eq!(
            Nft::from_override(None).binary,
            PathBuf::from("/usr/sbin/nft")
        );
        assert_eq!(
            Nft::from_override(Some("nft".into())).binary,
            PathBuf::from(DEFAULT_NFT)
        );
        assert_eq!(
            Nft::from_override(Some("/opt/nft".into())).binary,
            PathBuf::from("/opt/nft")
        );
    }
}
