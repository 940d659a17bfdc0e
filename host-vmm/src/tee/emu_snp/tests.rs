use super::*;
use crate::tee::emulated::EmulatedTee;
use measured_boot::snp::{SnpLaunchPlan, SnpPlanConfig};
use measured_boot::FirmwareImage;

const GHCB: u64 = 0x9000;
const SECRETS: u64 = 0xA000;

fn psp() -> (SnpPsp, tempfile::TempDir) {
    let fw = measured_boot::testing::emulated_guest_image(&[0xF4]);
    let dir = tempfile::tempdir().unwrap();
    EmulatedSnpPlatform::create(dir.path()).unwrap();
    let config = SnpPlanConfig {
        vcpus: 1,
        vcpu_sig: measured_boot::snp::cpu::sig_by_name("EPYC-v4").unwrap(),
        guest_features: 1,
        vmm_type: measured_boot::snp::vmsa::VmmType::Qemu,
        hashes: None,
    };
    let plan = SnpLaunchPlan::new(FirmwareImage::parse(fw.clone()).unwrap(), config).unwrap();
    let (tee, _) = EmulatedTee::launch_snp(dir.path(), &plan, 0x30000, [7; 32]).unwrap();
    let EmulatedTee::Snp { platform, guest } = tee else {
        unreachable!()
    };
    let mem = crate::vstate::memory::create(64 << 20, &fw).unwrap();
    let layout = PspLayout {
        launched: vec![(0x1000, 0x7000)],
        secrets: Some(SECRETS),
        cpuid: Some(0xB000),
    };
    (
        SnpPsp::new(mem, None, guest, platform, &layout, &[1, 0, 0, 0]).unwrap(),
        dir,
    )
}

fn wrmsr(p: &SnpPsp, v: u64) {
    let mut d = v;
    assert_eq!(p.msr(0, ghcb::MSR_GHCB, true, &mut d), Some(Ok(())));
}

fn rdmsr(p: &SnpPsp, msr: u32) -> u64 {
    let mut d = 0;
    assert_eq!(p.msr(0, msr, false, &mut d), Some(Ok(())));
    d
}

/// The MSR protocol as the firmware uses it: SEV info, GHCB registration, PSC.
#[test]
fn the_msr_protocol_answers_as_the_ghcb_spec_says() {
    let (p, _d) = psp();
    assert_eq!(
        rdmsr(&p, ghcb::MSR_SEV_STATUS) & 7,
        7,
        "SEV, SEV-ES and SNP active"
    );
    let mut d = 0;
    assert_eq!(p.msr(0, ghcb::MSR_SEV_STATUS, true, &mut d), Some(Err(())));
    wrmsr(&p, 0x002);
    p.vmgexit(0).unwrap();
    assert_eq!(rdmsr(&p, ghcb::MSR_GHCB), ghcb::sev_info(CBIT));
    // A PSC request (MSR protocol, 4 KiB) assigns the page, unvalidated.
    wrmsr(&p, (1 << 52) | 0x20_0000 | 0x014);
    p.vmgexit(0).unwrap();
    assert_eq!(rdmsr(&p, ghcb::MSR_GHCB), 0x015);
    assert!(p.rmp_entry(0x20_0000).assigned);
    assert!(!p.rmp_entry(0x20_0000).validated);
    wrmsr(&p, GHCB | 0x012);
    p.vmgexit(0).unwrap();
    assert_eq!(rdmsr(&p, ghcb::MSR_GHCB), GHCB | 0x013);
    // Termination stops the guest.
    wrmsr(&p, (3 << 16) | 0x100);
    assert!(matches!(
        p.vmgexit(0),
        Err(PspError::Terminated { set: 0, code: 3 })
    ));
    wrmsr(&p, 0x7FF);
    assert!(matches!(p.vmgexit(0), Err(PspError::MsrProtocol(0x7FF))));
}

#[test]
fn msr_protocol_cpuid_answers_from_the_vcpus_cpuid_not_the_hosts() {
    let (p, _d) = psp();
    let entry = |function, ebx| kvm_bindings::kvm_cpuid_entry2 {
        function,
        ebx,
        ..Default::default()
    };
    let cpuid = kvm_bindings::CpuId::from_entries(&[
        entry(0x8000_001F, 0x1234_002F),
        entry(1, 0x0000_0800),
    ])
    .unwrap();
    p.set_guest_cpuid(&cpuid);
    let ask = |leaf: u64, reg: u64, vcpu: u32| {
        let mut d = (leaf << 32) | (reg << 30) | 0x004;
        assert_eq!(p.msr(vcpu, ghcb::MSR_GHCB, true, &mut d), Some(Ok(())));
        p.vmgexit(vcpu).unwrap();
        assert_eq!(p.msr(vcpu, ghcb::MSR_GHCB, false, &mut d), Some(Ok(())));
        d
    };
    // EBX of 0x8000001F: the guest's C-bit (47 = 0x2F), not the host's.
    assert_eq!(ask(0x8000_001F, 1, 0) >> 32, 0x1234_002F);
    assert_eq!(ask(0x8000_001F, 1, 0) & 0xFFF, 0x005, "CPUID response code");
    // Leaf 1 EBX carries each vCPU's APIC ID, as its own CPUID does.
    assert_eq!(ask(1, 1, 3) >> 32, 0x0300_0800);
    // A leaf the vCPU does not have reads zero (the host's would leak otherwise).
    assert_eq!(ask(0x8000_0002, 0, 0) >> 32, 0);
}

/// Identity page tables at 0x100000 (1 GiB pages would be simplest, but the firmware
/// uses 2 MiB pages: so do we), with the C-bit in every entry.
fn page_tables(p: &SnpPsp) -> kvm_sregs {
    let c = 1u64 << CBIT;
    p.mem
        .write_obj(0x10_1000u64 | c | 3, GuestAddress(0x10_0000))
        .unwrap();
    p.mem
        .write_obj(0x10_2000u64 | c | 3, GuestAddress(0x10_1000))
        .unwrap();
    for i in 0..32u64 {
        p.mem
            .write_obj((i << 21) | c | 0x83, GuestAddress(0x10_2000 + i * 8))
            .unwrap();
    }
    // A second mapping: VA 0x4000_0000 (PDPT entry 1) -> PD entry 0 -> GPA 0x20_0000.
    p.mem
        .write_obj(0x10_3000u64 | c | 3, GuestAddress(0x10_1008))
        .unwrap();
    p.mem
        .write_obj(0x20_0000u64 | c | 0x83, GuestAddress(0x10_3000))
        .unwrap();
    kvm_sregs {
        cr0: 0x8000_0011,
        cr3: 0x10_0000 | c,
        cr4: 0x20,
        efer: 0x500,
        ..Default::default()
    }
}

#[test]
fn pvalidate_translates_the_virtual_address_and_sets_rax_and_cf() {
    let (p, _d) = psp();
    let sregs = page_tables(&p);
    let regs = |va: u64, huge: u64| kvm_regs {
        rax: va,
        rcx: huge,
        rdx: 1,
        rflags: 2,
        ..Default::default()
    };
    // Not yet assigned: an RMP fault.
    let mut r = regs(0x4000_0000, 0);
    assert!(matches!(
        p.pvalidate(&mut r, &sregs),
        Err(PspError::Rmp(RmpFault::NotAssigned(0x20_0000)))
    ));
    for i in 0..512 {
        p.state()
            .rmp
            .page_state_change(0x20_0000 + i * 0x1000, false, true)
            .unwrap();
    }
    // The VA 0x4000_0000 is GPA 0x20_0000: the RMP entry there is validated.
    let mut r = regs(0x4000_0000, 1);
    p.pvalidate(&mut r, &sregs).unwrap();
    assert_eq!(r.rax, rmp::PVALIDATE_FAIL_SIZEMISMATCH);
    let mut r = regs(0x4000_0000, 0);
    p.pvalidate(&mut r, &sregs).unwrap();
    assert_eq!((r.rax, r.rflags & 1), (0, 0));
    assert!(p.rmp_entry(0x20_0000).validated);
    let mut r = regs(0x20_0000, 0);
    p.pvalidate(&mut r, &sregs).unwrap();
    assert_eq!((r.rax, r.rflags & 1), (0, 1), "already validated: CF");
    // An unmapped VA.
    let mut r = regs(0x8000_0000, 0);
    assert!(matches!(
        p.pvalidate(&mut r, &sregs),
        Err(PspError::Unmapped(0x8000_0000))
    ));
}

fn ghcb_call(
    p: &SnpPsp,
    code: u64,
    info1: u64,
    info2: u64,
    f: impl FnOnce(&mut [u8; 4096]),
) -> [u8; 4096] {
    let mut g = [0u8; 4096];
    ghcb::set(&mut g, off::SW_EXIT_CODE, code);
    ghcb::set(&mut g, off::SW_EXIT_INFO_1, info1);
    ghcb::set(&mut g, off::SW_EXIT_INFO_2, info2);
    f(&mut g);
    p.mem.write_slice(&g, GuestAddress(GHCB)).unwrap();
    wrmsr(p, GHCB);
    p.vmgexit(0).unwrap();
    let mut out = [0u8; 4096];
    p.mem.read_slice(&mut out, GuestAddress(GHCB)).unwrap();
    out
}

#[test]
fn the_psc_nae_processes_2m_and_4k_entries_and_reports_progress() {
    let (p, _d) = psp();
    let buf = GHCB + off::SHARED_BUFFER as u64;
    let out = ghcb_call(&p, exit::SNP_PSC, 0, 0, |g| {
        ghcb::set(g, off::SW_SCRATCH, buf);
        let o = off::SHARED_BUFFER;
        g[o..o + 2].copy_from_slice(&0u16.to_le_bytes());
        g[o + 2..o + 4].copy_from_slice(&1u16.to_le_bytes());
        let e0 = PscEntry {
            gpa: 0x40_0000,
            op: 1,
            huge: true,
            cur_page: 0,
        };
        let e1 = PscEntry {
            gpa: 0x60_1000,
            op: 1,
            huge: false,
            cur_page: 0,
        };
        g[o + 8..o + 16].copy_from_slice(&e0.encode().to_le_bytes());
        g[o + 16..o + 24].copy_from_slice(&e1.encode().to_le_bytes());
    });
    assert_eq!(ghcb::get(&out, off::SW_EXIT_INFO_2), 0);
    let o = off::SHARED_BUFFER;
    assert_eq!(
        u16::from_le_bytes([out[o], out[o + 1]]),
        2,
        "cur_entry past the end"
    );
    assert!(p.rmp_entry(0x40_0000).huge && p.rmp_entry(0x5F_F000).assigned);
    assert!(p.rmp_entry(0x60_1000).assigned && !p.rmp_entry(0x60_1000).huge);
    assert!(!p.rmp_entry(0x60_0000).assigned);
    // A misaligned 2 MiB entry: error, cur_entry stops at it.
    let out = ghcb_call(&p, exit::SNP_PSC, 0, 0, |g| {
        ghcb::set(g, off::SW_SCRATCH, buf);
        let o = off::SHARED_BUFFER;
        g[o + 2..o + 4].copy_from_slice(&0u16.to_le_bytes());
        let e = PscEntry {
            gpa: 0x80_1000,
            op: 2,
            huge: true,
            cur_page: 0,
        };
        g[o + 8..o + 16].copy_from_slice(&e.encode().to_le_bytes());
    });
    // KVM: a PSC status comes back with info_1 = 0 and the status in info_2.
    assert_eq!(ghcb::get(&out, off::SW_EXIT_INFO_1), 0);
    assert_eq!(
        ghcb::get(&out, off::SW_EXIT_INFO_2),
        ghcb::PSC_ERROR_INVALID_ENTRY
    );
    // A scratch address the guest chose near u64::MAX is malformed input, not a
    // panic of the vCPU thread (it overflowed the bounds check before).
    let out = ghcb_call(&p, exit::SNP_PSC, 0, 0, |g| {
        ghcb::set(g, off::SW_SCRATCH, u64::MAX - 6);
    });
    assert_eq!(ghcb::get(&out, off::SW_EXIT_INFO_1), 2);
    assert_eq!(
        ghcb::get(&out, off::SW_EXIT_INFO_2),
        ghcb::GHCB_ERR_INVALID_SCRATCH_AREA
    );
    // A page-state change outside guest RAM is refused (the RMP does not grow).
    let out = ghcb_call(&p, exit::SNP_PSC, 0, 0, |g| {
        ghcb::set(g, off::SW_SCRATCH, buf);
        let o = off::SHARED_BUFFER;
        g[o..o + 4].fill(0);
        let e = PscEntry {
            gpa: 1 << 45,
            op: 1,
            huge: true,
            cur_page: 0,
        };
        g[o + 8..o + 16].copy_from_slice(&e.encode().to_le_bytes());
    });
    assert_ne!(ghcb::get(&out, off::SW_EXIT_INFO_2), 0);
    assert!(!p.rmp_entry(1 << 45).assigned);
    // A scratch area outside the shared buffer is refused.
    let out = ghcb_call(&p, exit::SNP_PSC, 0, 0, |g| {
        ghcb::set(g, off::SW_SCRATCH, 0x5000)
    });
    assert_eq!(
        ghcb::get(&out, off::SW_EXIT_INFO_2),
        ghcb::GHCB_ERR_INVALID_SCRATCH_AREA
    );
}

struct Ports(Mutex<Vec<(u16, Vec<u8>)>>);

impl PortIo for Ports {
    fn read(&self, _port: u16, data: &mut [u8]) {
        data.fill(0x5A);
    }
    fn write(&self, port: u16, data: &[u8]) -> Option<VmEvent> {
        self.0.lock().unwrap().push((port, data.to_vec()));
        (port == 0x505).then_some(VmEvent::Panic)
    }
}

#[test]
fn ioio_exits_reach_the_port_bus() {
    let (p, _d) = psp();
    let ports = Arc::new(Ports(Mutex::new(Vec::new())));
    p.set_ports(ports.clone());
    let info1 = (0x3F8u64 << 16) | (1 << 4);
    ghcb_call(&p, exit::IOIO, info1, 0, |g| {
        ghcb::set(g, off::RAX, u64::from(b'A'))
    });
    assert_eq!(ports.0.lock().unwrap()[0], (0x3F8, vec![b'A']));
    let out = ghcb_call(&p, exit::IOIO, (0x3FD << 16) | (1 << 4) | 1, 0, |_| {});
    assert_eq!(ghcb::get(&out, off::RAX), 0x5A);
    assert!(ghcb::valid(&out, off::RAX));
    // An OUT whose RAX the guest did not mark valid is a protocol error.
    let mut g = [0u8; 4096];
    ghcb::set(&mut g, off::SW_EXIT_CODE, exit::IOIO);
    ghcb::set(&mut g, off::SW_EXIT_INFO_1, info1);
    p.mem.write_slice(&g, GuestAddress(GHCB)).unwrap();
    wrmsr(&p, GHCB);
    assert!(matches!(p.vmgexit(0), Err(PspError::Ghcb(..))));
}

/// What the guest side does (as Linux sev-guest): VMPCK0 from the secrets page,
/// MSG_REPORT_REQ with sequence number 1, then the response with 2.
#[test]
fn a_guest_request_encrypted_with_vmpck0_gets_a_signed_report() {
    let (p, _d) = psp();
    let mut secrets = [0u8; 4096];
    p.mem
        .read_slice(&mut secrets, GuestAddress(SECRETS))
        .unwrap();
    assert_eq!(secrets[0..4], SECRETS_VERSION.to_le_bytes());
    let key: [u8; 32] = secrets[0x20..0x40].try_into().unwrap();
    assert_ne!(key, [0; 32]);
    let mut payload = [0u8; guest_msg::REPORT_REQ_SIZE];
    payload[..64].copy_from_slice(&[0xAB; 64]);
    let h = guest_msg::Header {
        seqno: 1,
        msg_type: guest_msg::msg_type::REPORT_REQ,
        msg_version: 1,
        msg_size: 0,
        vmpck: 0,
    };
    let msg = guest_msg::seal(&key, h, &payload);
    let (req, rsp) = (0x30_0000u64, 0x30_1000u64);
    p.mem.write_slice(&msg, GuestAddress(req)).unwrap();
    let out = ghcb_call(&p, exit::SNP_GUEST_REQUEST, req, rsp, |_| {});
    assert_eq!(ghcb::get(&out, off::SW_EXIT_INFO_2), 0);
    let mut m = [0u8; 4096];
    p.mem.read_slice(&mut m, GuestAddress(rsp)).unwrap();
    let (h, body) = guest_msg::open(&key, &m).unwrap();
    assert_eq!((h.seqno, h.msg_type), (2, guest_msg::msg_type::REPORT_RSP));
    assert_eq!(body[0..4], [0; 4], "status");
    let len = u32::from_le_bytes(body[4..8].try_into().unwrap()) as usize;
    assert_eq!(len, 0x4A0);
    let report = &body[32..32 + len];
    assert_eq!(&report[0x50..0x90], &[0xAB; 64][..], "REPORT_DATA");
    // Replaying the same request: refused (the PSP expects sequence number 3).
    let out = ghcb_call(&p, exit::SNP_GUEST_REQUEST, req, rsp, |_| {});
    assert_ne!(ghcb::get(&out, off::SW_EXIT_INFO_2), 0);
    // Extended request with too small a buffer: the pages needed in RBX.
    let out = ghcb_call(&p, exit::SNP_EXT_GUEST_REQUEST, req, rsp, |g| {
        ghcb::set(g, off::RAX, 0x31_0000);
        ghcb::set(g, off::RBX, 0);
    });
    assert_eq!(
        ghcb::get(&out, off::SW_EXIT_INFO_2),
        ghcb::GUEST_VMM_ERR_INVALID_LEN << 32
    );
    assert!(ghcb::get(&out, off::RBX) >= 1);
    // A huge buffer size from the guest allocates nothing on the host; a buffer outside
    // RAM is refused.
    let out = ghcb_call(&p, exit::SNP_EXT_GUEST_REQUEST, req, rsp, |g| {
        ghcb::set(g, off::RAX, 1 << 45);
        ghcb::set(g, off::RBX, 1 << 40);
    });
    assert_eq!(
        ghcb::get(&out, off::SW_EXIT_INFO_2),
        ghcb::GHCB_ERR_INVALID_INPUT
    );
}

#[test]
fn instruction_bytes_come_from_the_emulation_failure_data() {
    // As measured: flags 1, count 15, then f2 0f 01 ff ...
    let data = [1u64, 0x6a80_e6ff_010f_f20f, 0x0268_0000_8000_6823, 0x1000];
    assert_eq!(&insn_bytes(&data).unwrap()[..4], &PVALIDATE);
    assert_eq!(insn_bytes(&[0, 0, 0]), None);
}

/// The PSP under the private-memory contract: 64 MiB of guest memory, shared at
/// launch except 0x1000-0x8000 (launched) and the secrets and CPUID pages the PSP adds;
/// sealed. Private memory is backed in 2 MiB units, as the backend sets it.
fn psp_cc() -> (SnpPsp, Arc<CcMemory>, tempfile::TempDir) {
    use crate::vstate::cc_memory::{CcConfig, CcTee};
    let fw = measured_boot::testing::emulated_guest_image(&[0xF4]);
    let dir = tempfile::tempdir().unwrap();
    EmulatedSnpPlatform::create(dir.path()).unwrap();
    let config = SnpPlanConfig {
        vcpus: 1,
        vcpu_sig: measured_boot::snp::cpu::sig_by_name("EPYC-v4").unwrap(),
        guest_features: 1,
        vmm_type: measured_boot::snp::vmsa::VmmType::Qemu,
        hashes: None,
    };
    let plan = SnpLaunchPlan::new(FirmwareImage::parse(fw).unwrap(), config).unwrap();
    let (tee, _) = EmulatedTee::launch_snp(dir.path(), &plan, 0x30000, [7; 32]).unwrap();
    let EmulatedTee::Snp { platform, guest } = tee else {
        unreachable!()
    };
    let cc = Arc::new(
        CcMemory::new(
            &[(GuestAddress(0), 64 << 20)],
            CcConfig {
                tee: CcTee::Snp,
                alias_bit: Some(u32::from(CBIT)),
            },
        )
        .unwrap(),
    );
    cc.set_largest_private_page(PageSize::Size2M);
    cc.vmm_memory()
        .write_obj(0x44u8, GuestAddress(0x30_0000))
        .unwrap();
    cc.launch_shared(0, 64 << 20).unwrap();
    cc.launch_private_with(0x1000, &[0u8; 0x7000]).unwrap();
    let layout = PspLayout {
        launched: vec![(0x1000, 0x7000)],
        secrets: Some(SECRETS),
        cpuid: Some(0xB000),
    };
    let psp = SnpPsp::new(
        cc.vmm_memory().clone(),
        Some(cc.clone()),
        guest,
        platform,
        &layout,
        &[1, 0, 0, 0],
    )
    .unwrap();
    cc.finish_launch().unwrap();
    (psp, cc, dir)
}

/// PVALIDATE (paging off: RAX is the GPA) of the page at `gpa`; returns (RAX, CF).
fn pvalidate(p: &SnpPsp, gpa: u64, huge: bool, validate: bool) -> Result<(u64, bool), PspError> {
    let mut regs = kvm_regs {
        rax: gpa,
        rcx: u64::from(huge),
        rdx: u64::from(validate),
        rflags: 2,
        ..Default::default()
    };
    p.pvalidate(&mut regs, &kvm_sregs::default())?;
    Ok((regs.rax, regs.rflags & RFLAGS_CF != 0))
}

/// Under the contract, PVALIDATE is the contract's validation with the hardware's
/// results: success, CF for a second validation (what the firmware and Linux treat as
/// a replay), FAIL_SIZEMISMATCH for a 2 MiB PVALIDATE over 4 KiB-validated pages,
/// FAIL_INPUT for a misaligned 2 MiB page, #NPF for a shared page; page-state changes
/// scrub. The secrets page is private: the VMM's view reads zero, the PSP's the page.
#[test]
fn under_the_contract_pvalidate_and_page_state_changes_have_the_hardware_results() {
    let (p, cc, _d) = psp_cc();
    let mut version = [0u8; 4];
    cc.trusted_read(SECRETS, &mut version).unwrap();
    assert_eq!(u32::from_le_bytes(version), SECRETS_VERSION);
    let seen: u32 = cc.vmm_memory().read_obj(GuestAddress(SECRETS)).unwrap();
    assert_eq!(seen, 0, "the VMM sees no private bytes after launch");
    assert!(
        p.rmp_entry(0x1000).validated,
        "launched pages are validated"
    );
    // What the VMM placed in memory the launch did not add stays (shared).
    let kept: u8 = cc.vmm_memory().read_obj(GuestAddress(0x30_0000)).unwrap();
    assert_eq!(kept, 0x44);
    // A PSC (MSR protocol) makes a page private, not validated.
    wrmsr(&p, (1 << 52) | 0x20_0000 | 0x014);
    p.vmgexit(0).unwrap();
    assert_eq!(rdmsr(&p, ghcb::MSR_GHCB), 0x015);
    let e = p.rmp_entry(0x20_0000);
    assert!(e.assigned && !e.validated);
    assert_eq!(pvalidate(&p, 0x20_0123, false, true).unwrap(), (0, false));
    assert!(p.rmp_entry(0x20_0000).validated);
    assert_eq!(
        pvalidate(&p, 0x20_0000, false, true).unwrap(),
        (0, true),
        "double validation: CF"
    );
    // The rest of that 2 MiB unit made private: a 2 MiB PVALIDATE is a size mismatch.
    assert!(p
        .page_state_change(0x20_0000, true, ghcb::psc_op::PRIVATE)
        .unwrap());
    assert_eq!(
        pvalidate(&p, 0x20_0000, true, true).unwrap(),
        (rmp::PVALIDATE_FAIL_SIZEMISMATCH, false)
    );
    // A whole 2 MiB page validates at once; misaligned is bad input.
    assert!(p
        .page_state_change(0x40_0000, true, ghcb::psc_op::PRIVATE)
        .unwrap());
    assert_eq!(
        pvalidate(&p, 0x40_1000, true, true).unwrap(),
        (rmp::PVALIDATE_FAIL_INPUT, false)
    );
    assert_eq!(pvalidate(&p, 0x40_0000, true, true).unwrap(), (0, false));
    assert!(p.rmp_entry(0x5F_F000).validated && p.rmp_entry(0x5F_F000).huge);
    // A shared page cannot be validated: #NPF, the guest stops.
    assert!(matches!(
        pvalidate(&p, 0x60_0000, false, true),
        Err(PspError::Rmp(RmpFault::NotAssigned(0x60_0000)))
    ));
    // Private → shared scrubs: the guest's data never shows in the shared page.
    cc.trusted_write(0x40_0000, &[0x99]).unwrap();
    assert!(p
        .page_state_change(0x40_0000, false, ghcb::psc_op::SHARED)
        .unwrap());
    let b: u8 = cc.vmm_memory().read_obj(GuestAddress(0x40_0000)).unwrap();
    assert_eq!(b, 0, "scrubbed on conversion");
    // Misaligned or outside RAM: refused entries, not faults.
    assert!(!p
        .page_state_change(0x40_1000, true, ghcb::psc_op::PRIVATE)
        .unwrap());
    assert!(!p
        .page_state_change(1 << 40, false, ghcb::psc_op::PRIVATE)
        .unwrap());
    // The GHCB must be shared.
    assert!(matches!(
        p.ghcb_page(0, 0x20_0000),
        Err(PspError::Ghcb(0x20_0000, "the page is private"))
    ));
}
