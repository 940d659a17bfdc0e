//! Fuzzes the verifier's HTTP-facing helpers on attacker-controlled header and path
//! text, through `verifier::fuzzing`: the `kbs-session-id` cookie parser, the session a
//! bearer token names (read before any check), resource path validation and the admin
//! API token format.
//!
//! Input: byte 0 picks the helper, the rest is its input (split on NUL into the parts a
//! helper takes: cookie header values, or repo/type/tag).
//!
//! Invariants: nothing panics; what is accepted has the shape the callers rely on (a
//! canonical hyphenated UUID, a path of three valid segments that splits back into the
//! inputs, a token that is exactly `cvmv.<16-char id>.<secret>`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use verifier::fuzzing;
use verifier::store::workloads::{valid_path, valid_segment};

fuzz_target!(|data: &[u8]| {
    let [sel, rest @ ..] = data else { return };
    match sel % 4 {
        0 => {
            let values: Vec<&[u8]> = rest.split(|&b| b == 0).take(8).collect();
            if let Ok(Some(id)) = fuzzing::cookie_session(&values) {
                assert_eq!(id.len(), 36);
                assert!(id
                    .bytes()
                    .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
                assert!(uuid_shape(&id), "{id}");
            }
        }
        1 => {
            let Ok(token) = std::str::from_utf8(rest) else {
                return;
            };
            if fuzzing::unverified_session(token).is_ok() {
                assert_eq!(token.split('.').count(), 3);
            }
        }
        2 => {
            let Ok(text) = std::str::from_utf8(rest) else {
                return;
            };
            let mut parts = text.splitn(3, '\0');
            let (repo, kind, tag) = (
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
            );
            match fuzzing::resource_path(repo, kind, tag) {
                Ok(path) => {
                    assert!(valid_path(&path));
                    assert_eq!(path, format!("{repo}/{kind}/{tag}"));
                    for s in [repo, kind, tag] {
                        assert!(valid_segment(s) && s != ".." && !s.contains('/'));
                    }
                }
                Err(_) => assert!(![repo, kind, tag].iter().all(|s| valid_segment(s))),
            }
        }
        _ => {
            let Ok(token) = std::str::from_utf8(rest) else {
                return;
            };
            if let Some((id, secret)) = fuzzing::split_token(token) {
                assert_eq!(id.len(), 16);
                assert!(!secret.is_empty());
                assert_eq!(token, format!("cvmv.{id}.{secret}"));
            }
        }
    }
});

fn uuid_shape(id: &str) -> bool {
    id.split('-').map(str::len).eq([8, 4, 4, 4, 12])
}
