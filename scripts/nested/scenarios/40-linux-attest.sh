# scenarios: linux-none-refused linux-none-vsock-refused linux-dmcrypt linux-snp linux-tdx linux-wrong-measurement linux-revoked linux-fake-verifier
# The production guest path in the stock guest kernel (issue 17 item 3): the initramfs of
# `cvm image initramfs` (cvm-agent, the kernel's own virtio/vsock/dm-crypt modules), the
# LUKS2 disk of `cvm image disk --from-dir` whose /sbin/init prints CVM-WORKLOAD-MARKER,
# `cvm-verifier serve` here (SQLite, --emulated-trust) behind the VMM's relay. Files from
# 40-linux-attest.build, under /la. Sourced by the outer /init.
#
# - linux-none-refused: --tee none, no cvm.tsm on the command line: the agent finds no TEE
#   interface; /init powers off (cvm exit 0), nothing unlocked.
# - linux-none-vsock-refused: --tee none with the production command line (cvm.tsm=vsock):
#   the VMM refuses the evidence port (RST); the agent fails, the guest powers off.
# - linux-dmcrypt: TEST-ONLY initramfs with the disk key baked in: the kernel's dm-crypt
#   opens the `cvm image disk` volume, switch_root, the marker, poweroff.
# - linux-snp / linux-tdx: the full flow under the emulated TEEs: evidence from the VMM's
#   vsock service, attestation through the relay, the key, cryptsetup open, switch_root,
#   the marker, poweroff (exit 0).
# - linux-wrong-measurement (a command line the workload did not register), linux-revoked
#   (the workload revoked), linux-fake-verifier (a verifier whose key the guest does not
#   pin, holding the same disk key): the agent gets no key, /init powers off (exit 0),
#   nothing unlocked.

ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up

# lx NAME WANT-RC WANT CVM-ARGS…: one launch; PASS if cvm exits WANT-RC, the log has WANT,
# and, unless WANT is the marker, nothing was unlocked (no marker, no switch_root, no
# mounted volume).
lx() {
  name=$1 want_rc=$2 want=$3
  shift 3
  rm -f /tmp/rc /tmp/init-at
  echo "NESTED-BEGIN $name"
  t0=$(now)
  { /cvm/cvm launch --memory 512M "$@" 2>&1; echo $? >/tmp/rc; } |
    while IFS= read -r line; do
      case "$line" in
        *"Run /init as init process"* | *cvm-init:*) [ -e /tmp/init-at ] || now >/tmp/init-at ;;
      esac
      echo "$line"
      echo "$line" >>/tmp/log-$name
    done
  t1=$(now)
  rc=$(cat /tmp/rc 2>/dev/null || echo none)
  result=PASS
  [ "$rc" = "$want_rc" ] || result=FAIL
  grep -q "$want" /tmp/log-$name || result=FAIL
  if [ "$want" != "CVM-WORKLOAD-MARKER" ]; then
    grep -Eq "CVM-WORKLOAD-MARKER|switching to the encrypted root|mounted on /newroot" /tmp/log-$name && result=FAIL
  fi
  init=$(cat /tmp/init-at 2>/dev/null || echo "")
  if [ -n "$init" ]; then
    init_s=$(awk -v a="$t0" -v b="$init" 'BEGIN { printf "%.2f", b - a }')
  else
    init_s=none
  fi
  total_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
  echo "NESTED-RESULT $name $result rc=$rc init=$init_s total=$total_s"
}

# verifier DIR: serves /la/DIR on 127.0.0.1:8443 (replacing the previous one).
vpid=
verifier() {
  [ -n "$vpid" ] && kill "$vpid" 2>/dev/null && sleep 1
  /cvm/cvm-verifier serve --listen 127.0.0.1:8443 --database "/la/$1/verifier.db" \
    --master-key-file "/la/$1/master.key" --tls-cert /la/tls-cert.pem --tls-key /la/tls-key.pem \
    --emulated-trust /la/platform >/tmp/verifier-$1.out 2>/tmp/verifier-$1.log &
  vpid=$!
  i=0
  until grep -q "https://127.0.0.1:8443" /tmp/verifier-$1.out 2>/dev/null; do
    i=$((i + 1))
    if [ "$i" -gt 120 ]; then
      echo "NESTED-FATAL cvm-verifier ($1) did not start"
      tail -n 5 /tmp/verifier-$1.log
      return 1
    fi
    sleep 0.5
  done
}

cmdline=$(cat /la/cmdline)
plain=$(echo "$cmdline" | sed 's/ cvm.tsm=vsock//')
none="--tee none --vcpus 1 --kernel /guest/vmlinuz --disk /la/disk.img"
# shellcheck disable=SC2086
lx linux-none-refused 0 "cvm-agent failed" $none --initrd /la/initrd.cpio \
  --vsock-uds /tmp/v-none.sock --cmdline "$plain"
rm -f /tmp/v-none.sock
# shellcheck disable=SC2086
lx linux-none-vsock-refused 0 "evidence service (vsock 2:50001) refused" $none \
  --initrd /la/initrd.cpio --vsock-uds /tmp/v-none.sock --cmdline "$cmdline"
rm -f /tmp/v-none.sock
# shellcheck disable=SC2086
lx linux-dmcrypt 0 "CVM-WORKLOAD-MARKER" $none --initrd /la/initrd-dmcrypt-test.cpio --cmdline "$plain"

relay="--url https://127.0.0.1:8443 --ca-cert /la/tls-cert.pem"
if verifier v; then
  # shellcheck disable=SC2086
  lx linux-snp 0 "CVM-WORKLOAD-MARKER" --config /la/vm-snp.toml $relay
  # shellcheck disable=SC2086
  lx linux-tdx 0 "CVM-WORKLOAD-MARKER" --config /la/vm-tdx.toml $relay
  # shellcheck disable=SC2086
  lx linux-wrong-measurement 0 "cvm-agent failed" --config /la/vm-snp.toml $relay \
    --cmdline "$cmdline cvm.test=unregistered"
fi
if verifier revoked; then
  # shellcheck disable=SC2086
  lx linux-revoked 0 "cvm-agent failed" --config /la/vm-snp.toml $relay
fi
if verifier fake; then
  # shellcheck disable=SC2086
  lx linux-fake-verifier 0 "cvm-agent failed" --config /la/vm-snp.toml $relay
fi
[ -n "$vpid" ] && kill "$vpid" 2>/dev/null
