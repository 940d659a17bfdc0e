//! vCPU signatures (CPUID Fn0000_0001_EAX) by QEMU CPU model name or by
//! family/model/stepping. The BSP's RDX at reset holds this signature, so it is part
//! of the launch digest.

/// CPUID signature from family, model and stepping (AMD CPUID specification #25481).
pub fn cpu_sig(family: u32, model: u32, stepping: u32) -> u32 {
    let (family_low, family_high) = if family > 0xf {
        (0xf, (family - 0xf) & 0xff)
    } else {
        (family, 0)
    };
    (family_high << 20)
        | (((model >> 4) & 0xf) << 16)
        | (family_low << 8)
        | ((model & 0xf) << 4)
        | (stepping & 0xf)
}

/// QEMU CPU model names (as sev-snp-measure accepts them) and their (family, model, stepping).
pub const CPU_TYPES: &[(&str, (u32, u32, u32))] = &[
    ("EPYC", (23, 1, 2)),
    ("EPYC-v1", (23, 1, 2)),
    ("EPYC-v2", (23, 1, 2)),
    ("EPYC-IBPB", (23, 1, 2)),
    ("EPYC-v3", (23, 1, 2)),
    ("EPYC-v4", (23, 1, 2)),
    ("EPYC-Rome", (23, 49, 0)),
    ("EPYC-Rome-v1", (23, 49, 0)),
    ("EPYC-Rome-v2", (23, 49, 0)),
    ("EPYC-Rome-v3", (23, 49, 0)),
    ("EPYC-Milan", (25, 1, 1)),
    ("EPYC-Milan-v1", (25, 1, 1)),
    ("EPYC-Milan-v2", (25, 1, 1)),
    ("EPYC-Genoa", (25, 17, 0)),
    ("EPYC-Genoa-v1", (25, 17, 0)),
    ("EPYC-Turin", (26, 0, 0)),
];

/// The signature of a named QEMU CPU model, if known.
pub fn sig_by_name(name: &str) -> Option<u32> {
    CPU_TYPES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|&(_, (f, m, s))| cpu_sig(f, m, s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_signatures() {
        assert_eq!(sig_by_name("EPYC-v4"), Some(0x800F12));
        assert_eq!(sig_by_name("EPYC-Rome"), Some(0x830F10));
        assert_eq!(sig_by_name("EPYC-Milan"), Some(0xA00F11));
        assert_eq!(sig_by_name("EPYC-Genoa"), Some(0xA10F10));
        assert_eq!(sig_by_name("EPYC-Turin"), Some(0xB00F00));
        assert_eq!(sig_by_name("Skylake"), None);
    }
}
