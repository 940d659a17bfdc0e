# scenarios: linux-emusnp-2vcpu linux-emutdx-2vcpu
# (One vCPU under each emulated TEE is 41-linux-attest-emulated's linux-snp and linux-tdx,
# whose VM descriptions have vcpus = 1 and which reach /init on the same plain handoff: a
# separate 1-vCPU boot here only cost the CI ~25 s.)
# The stock kernel (the tier's guest kernel) reaches its /init under
# `cvm launch --tee emulated-snp` on this standard KVM: the firmware does the measured,
# validated launch (kernel, initrd and command line hashes checked; RAM validated
# through the emulator traps), then, because the measured command line says
# `cvm.emulated_handoff=plain`, boots the kernel as a plain guest (no CC blob; the
# emulated PSP reports SEV_STATUS = 0 from then on): Linux's own SNP code would execute
# PVALIDATE/VMGEXIT, which raise #UD here. Under `--tee emulated-tdx` the same word
# makes the VMM show CPUID (0x21, 0) "cvmPlainTDX " (the firmware runs its TDX code:
# RTMRs extended, RAM accepted; Linux does not see a TD) and, at the firmware's signal,
# end the private-memory contract: every page becomes shared memory with its contents,
# so Linux's plain GPAs, the ACPI tables and the MADT wakeup mailbox (where the
# firmware's APs wait) work (README "Stock Linux under the emulated TEEs"). Sourced by
# the outer /init.

# linux_emu NAME TEE VCPUS: the stock kernel with the tiny guest initramfs.
# A guest kernel crash (double fault, oops: about 1 in 20 Linux boots under the emulated
# TEEs on QEMU TCG's nested SVM, cause unknown: README "Status") runs the boot once more,
# said loudly (NESTED-RETRY, retried=1); a second crash fails.
linux_emu() {
  emu_retried=0
  linux_emu_once "$@"
  if [ "$result" = FAIL ] && [ "$rc" = 1 ] &&
    grep -Eq "double fault|general protection fault|Oops:|Kernel panic" /tmp/log-$1; then
    echo "NESTED-RETRY $1: the guest kernel crashed: $(grep -Eo "double fault|general protection fault|Oops:.*|Kernel panic.*" /tmp/log-$1 | head -n 1)"
    mv /tmp/log-$1 /tmp/log-$1.first
    emu_retried=1
    linux_emu_once "$@"
  fi
  echo "NESTED-RESULT $name $result rc=$rc init=$init_s total=$total_s retried=$emu_retried"
}

linux_emu_once() {
  name=$1 tee=$2 vcpus=$3
  rm -f /tmp/rc /tmp/init-at
  echo "NESTED-BEGIN $name"
  t0=$(now)
  { timeout -s KILL 300 /cvm/cvm launch --tee "$tee" --emulated-platform /guest/platform --vcpus "$vcpus" \
      --memory 512M --kernel /guest/vmlinuz --initrd /guest/initrd.cpio \
      --cmdline "console=ttyS0 quiet panic=-1 cvm.emulated_handoff=plain" 2>&1
    echo $? >/tmp/rc; } |
    while IFS= read -r line; do
      case "$line" in
        *CVM-GUEST-INIT*) [ -e /tmp/init-at ] || now >/tmp/init-at ;;
      esac
      echo "$line"
      echo "$line" >>/tmp/log-$name
    done
  t1=$(now)
  rc=$(cat /tmp/rc 2>/dev/null || echo none)
  init=$(cat /tmp/init-at 2>/dev/null || echo "")
  result=PASS
  [ "$rc" = 0 ] || result=FAIL
  grep -q "CVM-GUEST-INIT cpus=$vcpus " /tmp/log-$name || result=FAIL
  # The VMM's record of the firmware's handoff signal (not the device-attached line,
  # which names the same word before the guest runs).
  grep -q 'event="plain-handoff"' /tmp/log-$name || result=FAIL
  if [ -n "$init" ]; then
    init_s=$(awk -v a="$t0" -v b="$init" 'BEGIN { printf "%.2f", b - a }')
  else
    init_s=none
  fi
  total_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
}

linux_emu linux-emusnp-2vcpu emulated-snp 2
linux_emu linux-emutdx-2vcpu emulated-tdx 2
