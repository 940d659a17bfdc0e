# scenarios: linux-snp linux-tdx linux-wrong-measurement linux-revoked linux-fake-verifier
# The production guest path under the emulated TEEs in the stock guest kernel (issue 17
# item 3): files from 40-linux-attest.build (under /la) and the lx runner of
# 40-linux-attest.sh, which is sourced first (needs NESTED_ONLY to include both).
#
# - linux-snp / linux-tdx: the full flow under emulated SNP / emulated TDX (both with the
#   measured plain handoff, cvm.emulated_handoff=plain): evidence from the VMM's vsock
#   service, attestation through the relay, the key, cryptsetup open, switch_root, the
#   marker, poweroff (exit 0).
# - linux-wrong-measurement (a command line the workload did not register), linux-revoked
#   (the workload revoked), linux-fake-verifier (a verifier whose key the guest does not
#   pin, holding the same disk key): the agent gets evidence over vsock and attests
#   ("cvm-agent: attesting (snp via vsock-tsm)"), the verifier refuses for that reason
#   (the KBS answers 4xx / revoked / not the pinned verifier), /init powers off (exit 0),
#   nothing unlocked. A failure to get evidence does not count as a refusal.


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
relay="--url https://127.0.0.1:8443 --ca-cert /la/tls-cert.pem"
attested='cvm-agent: attesting \(snp via vsock-tsm\)'
if verifier v; then
  lx_need="$attested"
  # shellcheck disable=SC2086
  lx linux-snp 0 "CVM-WORKLOAD-MARKER" --config /la/vm-snp.toml $relay
  lx_need="$attested
cvm-agent: error: the KBS answered 4[0-9][0-9]"
  # shellcheck disable=SC2086
  lx linux-wrong-measurement 0 "cvm-agent failed" --config /la/vm-snp.toml $relay \
    --cmdline "$cmdline cvm.test=unregistered"
fi
if verifier revoked; then
  lx_need="$attested
cvm-agent: error: the KBS answered 4[0-9][0-9].*revoked"
  # shellcheck disable=SC2086
  lx linux-revoked 0 "cvm-agent failed" --config /la/vm-snp.toml $relay
fi
if verifier fake; then
  lx_need="$attested
cvm-agent: error: the KBS is not the pinned verifier"
  # shellcheck disable=SC2086
  lx linux-fake-verifier 0 "cvm-agent failed" --config /la/vm-snp.toml $relay
fi
if verifier v; then
  lx_need='cvm-agent: attesting \(tdx via vsock-tsm\)'
  # shellcheck disable=SC2086
  lx linux-tdx 0 "CVM-WORKLOAD-MARKER" --config /la/vm-tdx.toml $relay
fi
lx_need=
[ -n "$vpid" ] && kill "$vpid" 2>/dev/null
