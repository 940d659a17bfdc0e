//! SHA-256 and SHA-384 (FIPS 180-4), scalar integer code only.
//!
//! Written here rather than taken from `sha2` because CPL0 code on this machine is
//! interpreted at ~1 µs per instruction: the rounds are unrolled eight at a time so the
//! working variables never move between registers, and the message schedule is
//! computed once per block. No SIMD, no SHA-NI (the image check enforces it).

const K256: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

const K512: [u64; 80] = [
    0x428a2f98d728ae22,
    0x7137449123ef65cd,
    0xb5c0fbcfec4d3b2f,
    0xe9b5dba58189dbbc,
    0x3956c25bf348b538,
    0x59f111f1b605d019,
    0x923f82a4af194f9b,
    0xab1c5ed5da6d8118,
    0xd807aa98a3030242,
    0x12835b0145706fbe,
    0x243185be4ee4b28c,
    0x550c7dc3d5ffb4e2,
    0x72be5d74f27b896f,
    0x80deb1fe3b1696b1,
    0x9bdc06a725c71235,
    0xc19bf174cf692694,
    0xe49b69c19ef14ad2,
    0xefbe4786384f25e3,
    0x0fc19dc68b8cd5b5,
    0x240ca1cc77ac9c65,
    0x2de92c6f592b0275,
    0x4a7484aa6ea6e483,
    0x5cb0a9dcbd41fbd4,
    0x76f988da831153b5,
    0x983e5152ee66dfab,
    0xa831c66d2db43210,
    0xb00327c898fb213f,
    0xbf597fc7beef0ee4,
    0xc6e00bf33da88fc2,
    0xd5a79147930aa725,
    0x06ca6351e003826f,
    0x142929670a0e6e70,
    0x27b70a8546d22ffc,
    0x2e1b21385c26c926,
    0x4d2c6dfc5ac42aed,
    0x53380d139d95b3df,
    0x650a73548baf63de,
    0x766a0abb3c77b2a8,
    0x81c2c92e47edaee6,
    0x92722c851482353b,
    0xa2bfe8a14cf10364,
    0xa81a664bbc423001,
    0xc24b8b70d0f89791,
    0xc76c51a30654be30,
    0xd192e819d6ef5218,
    0xd69906245565a910,
    0xf40e35855771202a,
    0x106aa07032bbd1b8,
    0x19a4c116b8d2d0c8,
    0x1e376c085141ab53,
    0x2748774cdf8eeb99,
    0x34b0bcb5e19b48a8,
    0x391c0cb3c5c95a63,
    0x4ed8aa4ae3418acb,
    0x5b9cca4f7763e373,
    0x682e6ff3d6b2b8a3,
    0x748f82ee5defb2fc,
    0x78a5636f43172f60,
    0x84c87814a1f0ab72,
    0x8cc702081a6439ec,
    0x90befffa23631e28,
    0xa4506cebde82bde9,
    0xbef9a3f7b2c67915,
    0xc67178f2e372532b,
    0xca273eceea26619c,
    0xd186b8c721c0c207,
    0xeada7dd6cde0eb1e,
    0xf57d4f7fee6ed178,
    0x06f067aa72176fba,
    0x0a637dc5a2c898a6,
    0x113f9804bef90dae,
    0x1b710b35131c471b,
    0x28db77f523047d84,
    0x32caab7b40c72493,
    0x3c9ebe0a15c9bebc,
    0x431d67c49c100d4c,
    0x4cc5d4becb3e42b6,
    0x597f299cfc657e2a,
    0x5fcb6fab3ad6faec,
    0x6c44198c4a475817,
];

/// One round. `Σ` is computed as ROTR_a(x ^ ROTR_(b-a)(x ^ ROTR_(c-b)(x))), which
/// equals ROTR_a(x) ^ ROTR_b(x) ^ ROTR_c(x) with one register copy fewer per term: every
/// instruction counts when CPL0 code is interpreted.
macro_rules! round {
    ($s0:expr, $s1:expr, $a:ident, $b:ident, $c:ident, $d:ident, $e:ident, $f:ident, $g:ident, $h:ident, $kw:expr) => {{
        let big_s1 = ($e ^ ($e ^ $e.rotate_right($s1.2 - $s1.1)).rotate_right($s1.1 - $s1.0))
            .rotate_right($s1.0);
        let t1 = $h
            .wrapping_add(big_s1)
            .wrapping_add($g ^ ($e & ($f ^ $g)))
            .wrapping_add($kw);
        let big_s0 = ($a ^ ($a ^ $a.rotate_right($s0.2 - $s0.1)).rotate_right($s0.1 - $s0.0))
            .rotate_right($s0.0);
        let t2 = big_s0.wrapping_add(($a & $b) | ($c & ($a | $b)));
        $d = $d.wrapping_add(t1);
        $h = t1.wrapping_add(t2);
    }};
}

macro_rules! eight_rounds {
    ($s0:expr, $s1:expr, $v:ident, $w:ident, $k:ident, $i:ident) => {{
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = $v;
        round!(
            $s0,
            $s1,
            a,
            b,
            c,
            d,
            e,
            f,
            g,
            h,
            $w[$i].wrapping_add($k[$i])
        );
        round!(
            $s0,
            $s1,
            h,
            a,
            b,
            c,
            d,
            e,
            f,
            g,
            $w[$i + 1].wrapping_add($k[$i + 1])
        );
        round!(
            $s0,
            $s1,
            g,
            h,
            a,
            b,
            c,
            d,
            e,
            f,
            $w[$i + 2].wrapping_add($k[$i + 2])
        );
        round!(
            $s0,
            $s1,
            f,
            g,
            h,
            a,
            b,
            c,
            d,
            e,
            $w[$i + 3].wrapping_add($k[$i + 3])
        );
        round!(
            $s0,
            $s1,
            e,
            f,
            g,
            h,
            a,
            b,
            c,
            d,
            $w[$i + 4].wrapping_add($k[$i + 4])
        );
        round!(
            $s0,
            $s1,
            d,
            e,
            f,
            g,
            h,
            a,
            b,
            c,
            $w[$i + 5].wrapping_add($k[$i + 5])
        );
        round!(
            $s0,
            $s1,
            c,
            d,
            e,
            f,
            g,
            h,
            a,
            b,
            $w[$i + 6].wrapping_add($k[$i + 6])
        );
        round!(
            $s0,
            $s1,
            b,
            c,
            d,
            e,
            f,
            g,
            h,
            a,
            $w[$i + 7].wrapping_add($k[$i + 7])
        );
        $v = [a, b, c, d, e, f, g, h];
    }};
}

fn compress256(state: &mut [u32; 8], block: &[u8]) {
    let mut kw = [0u32; 64];
    for (i, w) in block.chunks_exact(4).take(16).enumerate() {
        kw[i] = u32::from_be_bytes([w[0], w[1], w[2], w[3]]);
    }
    for i in 16..64 {
        let (x, y) = (kw[i - 15], kw[i - 2]);
        let s0 = (x ^ x.rotate_right(11)).rotate_right(7) ^ (x >> 3);
        let s1 = (y ^ y.rotate_right(2)).rotate_right(17) ^ (y >> 10);
        kw[i] = kw[i - 16]
            .wrapping_add(s0)
            .wrapping_add(kw[i - 7])
            .wrapping_add(s1);
    }
    let mut v = *state;
    let mut i = 0;
    while i < 64 {
        eight_rounds!((2, 13, 22), (6, 11, 25), v, kw, K256, i);
        i += 8;
    }
    for (s, x) in state.iter_mut().zip(v) {
        *s = s.wrapping_add(x);
    }
}

fn compress512(state: &mut [u64; 8], block: &[u8]) {
    let mut kw = [0u64; 80];
    for (i, w) in block.chunks_exact(8).take(16).enumerate() {
        kw[i] = u64::from_be_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
    }
    for i in 16..80 {
        let (x, y) = (kw[i - 15], kw[i - 2]);
        let s0 = (x ^ x.rotate_right(7)).rotate_right(1) ^ (x >> 7);
        let s1 = (y ^ y.rotate_right(42)).rotate_right(19) ^ (y >> 6);
        kw[i] = kw[i - 16]
            .wrapping_add(s0)
            .wrapping_add(kw[i - 7])
            .wrapping_add(s1);
    }
    let mut v = *state;
    let mut i = 0;
    while i < 80 {
        eight_rounds!((28, 34, 39), (14, 18, 41), v, kw, K512, i);
        i += 8;
    }
    for (s, x) in state.iter_mut().zip(v) {
        *s = s.wrapping_add(x);
    }
}

impl Default for Sha256 {
    fn default() -> Self {
        Self::new()
    }
}

impl Default for Sha384 {
    fn default() -> Self {
        Self::new()
    }
}

/// Incremental SHA-256.
pub struct Sha256 {
    state: [u32; 8],
    buf: [u8; 64],
    used: usize,
    total: u64,
}

impl Sha256 {
    /// A fresh hash.
    pub fn new() -> Self {
        Self {
            state: [
                0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
                0x5be0cd19,
            ],
            buf: [0; 64],
            used: 0,
            total: 0,
        }
    }

    /// Absorbs `data`.
    pub fn update(&mut self, mut data: &[u8]) {
        self.total = self.total.wrapping_add(data.len() as u64);
        if self.used > 0 {
            let n = (64 - self.used).min(data.len());
            self.buf[self.used..self.used + n].copy_from_slice(&data[..n]);
            self.used += n;
            data = &data[n..];
            if self.used < 64 {
                return;
            }
            let b = self.buf;
            compress256(&mut self.state, &b);
            self.used = 0;
        }
        let mut blocks = data.chunks_exact(64);
        for b in &mut blocks {
            compress256(&mut self.state, b);
        }
        let rest = blocks.remainder();
        self.buf[..rest.len()].copy_from_slice(rest);
        self.used = rest.len();
    }

    /// The digest.
    pub fn finish(mut self) -> [u8; 32] {
        let bits = self.total.wrapping_mul(8);
        let mut pad = [0u8; 72];
        pad[0] = 0x80;
        let n = if self.used < 56 {
            56 - self.used
        } else {
            120 - self.used
        };
        self.update(&pad[..n]);
        self.update(&bits.to_be_bytes());
        let mut out = [0u8; 32];
        for (o, s) in out.chunks_exact_mut(4).zip(self.state) {
            o.copy_from_slice(&s.to_be_bytes());
        }
        out
    }
}

/// Incremental SHA-384.
pub struct Sha384 {
    state: [u64; 8],
    buf: [u8; 128],
    used: usize,
    total: u64,
}

impl Sha384 {
    /// A fresh hash.
    pub fn new() -> Self {
        Self {
            state: [
                0xcbbb9d5dc1059ed8,
                0x629a292a367cd507,
                0x9159015a3070dd17,
                0x152fecd8f70e5939,
                0x67332667ffc00b31,
                0x8eb44a8768581511,
                0xdb0c2e0d64f98fa7,
                0x47b5481dbefa4fa4,
            ],
            buf: [0; 128],
            used: 0,
            total: 0,
        }
    }

    /// Absorbs `data`.
    pub fn update(&mut self, mut data: &[u8]) {
        self.total = self.total.wrapping_add(data.len() as u64);
        if self.used > 0 {
            let n = (128 - self.used).min(data.len());
            self.buf[self.used..self.used + n].copy_from_slice(&data[..n]);
            self.used += n;
            data = &data[n..];
            if self.used < 128 {
                return;
            }
            let b = self.buf;
            compress512(&mut self.state, &b);
            self.used = 0;
        }
        let mut blocks = data.chunks_exact(128);
        for b in &mut blocks {
            compress512(&mut self.state, b);
        }
        let rest = blocks.remainder();
        self.buf[..rest.len()].copy_from_slice(rest);
        self.used = rest.len();
    }

    /// The digest.
    pub fn finish(mut self) -> [u8; 48] {
        let bits = u128::from(self.total).wrapping_mul(8);
        let mut pad = [0u8; 128];
        pad[0] = 0x80;
        let n = if self.used < 112 {
            112 - self.used
        } else {
            240 - self.used
        };
        self.update(&pad[..n]);
        self.update(&bits.to_be_bytes());
        let mut out = [0u8; 48];
        for (o, s) in out.chunks_exact_mut(8).zip(self.state) {
            o.copy_from_slice(&s.to_be_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> std::string::String {
        b.iter().map(|x| std::format!("{x:02x}")).collect()
    }

    #[test]
    fn known_answers() {
        let mut h = Sha256::new();
        h.update(b"abc");
        assert_eq!(
            hex(&h.finish()),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let mut h = Sha384::new();
        h.update(b"abc");
        assert_eq!(hex(&h.finish()), "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7");
        // Split updates across block boundaries.
        let data: std::vec::Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        for cut in [0, 1, 55, 56, 63, 64, 65, 127, 128, 129, 999] {
            let mut a = Sha256::new();
            a.update(&data[..cut]);
            a.update(&data[cut..]);
            let mut b = Sha256::new();
            b.update(&data);
            assert_eq!(a.finish(), b.finish());
            let mut a = Sha384::new();
            a.update(&data[..cut]);
            a.update(&data[cut..]);
            let mut b = Sha384::new();
            b.update(&data);
            assert_eq!(a.finish(), b.finish());
        }
    }
}
