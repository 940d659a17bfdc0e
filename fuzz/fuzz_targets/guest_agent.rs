//! Fuzzes what the guest agent parses from bytes the host controls: the HTTP/1.1
//! response parser (status line, headers, Content-Length and chunked framing, limits)
//! and the JWE (flattened JSON) decryption of a released resource.
//!
//! Input: byte 0 picks the parser, the rest is the response or the JWE.
//! - even: `http::parse_response` on every prefix length the agent could have read
//!   (stream still open) and on the whole input at EOF;
//! - odd: `EphemeralKey::decrypt` with a fixed P-256 key (as the agent holds one).
//!
//! Invariants: nothing panics; a parsed response never holds a body larger than the
//! limit, complete or not yet at EOF; a decrypted secret is never longer than its JWE.
#![no_main]

use std::sync::OnceLock;

use guest_agent::http::{parse_response, Limits};
use guest_agent::jwe::{Curve, EphemeralKey};
use guest_agent::rng::Entropy;
use libfuzzer_sys::fuzz_target;

struct Fixed(u8);

impl Entropy for Fixed {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), guest_agent::EntropyError> {
        for b in buf.iter_mut() {
            self.0 = self.0.wrapping_mul(31).wrapping_add(7);
            *b = self.0;
        }
        Ok(())
    }
}

fn key() -> &'static EphemeralKey {
    static K: OnceLock<EphemeralKey> = OnceLock::new();
    K.get_or_init(|| EphemeralKey::generate(Curve::P256, &mut Fixed(1)).expect("a key"))
}

const LIMITS: Limits = Limits {
    max_head: 2048,
    max_headers: 16,
    max_body: 4096,
};

fuzz_target!(|data: &[u8]| {
    let [sel, rest @ ..] = data else { return };
    if sel & 1 == 1 {
        if let Ok(secret) = key().decrypt(rest) {
            assert!(secret.expose().len() <= rest.len());
        }
        return;
    }
    let whole = parse_response(rest, true, &LIMITS);
    if let Ok(Some(r)) = &whole {
        assert!(r.body.len() <= LIMITS.max_body);
    }
    for n in [rest.len() / 2, rest.len()] {
        if let Ok(Some(r)) = parse_response(&rest[..n], false, &LIMITS) {
            assert!(r.body.len() <= LIMITS.max_body);
        }
    }
});
