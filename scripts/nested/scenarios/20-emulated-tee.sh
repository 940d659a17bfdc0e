# scenarios: emutee-snp emutee-tdx emutee-snp-literal
# The emulated TEEs on a standard KVM (issue 13): the project firmware and the bare-metal
# test guest under `cvm launch --tee emulated-snp|emulated-tdx` with the default
# `--tee-trap auto`. Here KVM raises #UD for PVALIDATE/TDCALL, so the VMM's probe must
# pick the emulator trap ("trap=port" in its log) and the firmware must follow it
# (SEV_STATUS bit 62 / CPUID 0x21 EAX): the measured launch (kernel hashes checked, or
# RTMRs extended) reaches the test guest, which detects its TEE, reads its evidence path
# and starts attesting ("attesting for"); with no verifier in the outer VM it then stops
# with an error (cvm exit 1, expected). emutee-snp-literal forces the literal
# instructions: the firmware's first PVALIDATE raises #UD in the guest (no IDT: a triple
# fault, reported as a reset, exit 1) and the test guest is never reached. The TD gets
# 96 MiB: the emulated TDX module backs private memory at 4 KiB, so the firmware accepts
# RAM one 4 KiB page per exit, which is slow under QEMU's emulation. Sourced by the
# outer /init; files from 20-emulated-tee.build.

# emutee NAME TEE TRAP MEMORY EXPECTED-RC MARKER FORBIDDEN: one launch of the test guest.
emutee() {
  name=$1 tee=$2 trap=$3 mem=$4 want_rc=$5 want=$6 forbid=$7
  rm -f /tmp/rc
  echo "NESTED-BEGIN $name"
  t0=$(now)
  key=$(cat /guest/verifier-key)
  { timeout -s KILL 240 /cvm/cvm launch --tee "$tee" --tee-trap "$trap" --emulated-platform /guest/platform \
      --vcpus 1 --memory "$mem" --kernel /guest/testguest.bzImage \
      --cmdline "console=ttyS0 cvm.kbs_resource=default/disk/demo cvm.verifier_key=$key cvm.tee_trap=port" \
      2>&1; echo $? >/tmp/rc; } |
    while IFS= read -r line; do
      echo "$line"
      echo "$line" >>/tmp/log-$name
    done
  t1=$(now)
  rc=$(cat /tmp/rc 2>/dev/null || echo none)
  result=PASS
  [ "$rc" = "$want_rc" ] || result=FAIL
  grep -q "$want" /tmp/log-$name || result=FAIL
  if [ -n "$forbid" ] && grep -q "$forbid" /tmp/log-$name; then result=FAIL; fi
  total_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
  echo "NESTED-RESULT $name $result rc=$rc total=$total_s"
}

emutee emutee-snp emulated-snp auto 512M 1 "cvm-testguest: emulated snp TEE (SNP guest request); attesting" ""
grep -q 'trap="port"' /tmp/log-emutee-snp || echo "NESTED-RESULT emutee-snp FAIL (the probe did not pick the port trap)"
emutee emutee-tdx emulated-tdx auto 96M 1 "cvm-testguest: emulated tdx TEE (TDG.MR.REPORT + GetQuote); attesting" ""
grep -q 'trap="port"' /tmp/log-emutee-tdx || echo "NESTED-RESULT emutee-tdx FAIL (the probe did not pick the port trap)"
emutee emutee-snp-literal emulated-snp instruction 512M 1 "cvm-firmware: SEV-SNP" "cvm-testguest"
