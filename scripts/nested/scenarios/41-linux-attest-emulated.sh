# scenarios: linux-snp linux-tdx linux-wrong-measurement linux-revoked linux-fake-verifier
# The production guest path under the emulated TEEs in the stock guest kernel (issue 17
# item 3): files from 40-linux-attest.build (under /la) and the lx runner of
# 40-linux-attest.sh, which is sourced first (needs NESTED_ONLY to include both).
#
# - linux-snp / linux-tdx: the full flow under the emulated TEEs: evidence from the VMM's
#   vsock service, attestation through the relay, the key, cryptsetup open, switch_root,
#   the marker, poweroff (exit 0).
# - linux-wrong-measurement (a command line the workload did not register), linux-revoked
#   (the workload revoked), linux-fake-verifier (a verifier whose key the guest does not
#   pin, holding the same disk key): the agent gets no key, /init powers off (exit 0),
#   nothing unlocked.


# verifier DIR: serves /la/DIR on 127.0.0.1:8443 (replacing the previous one).
vpid=
verifier() {
  # Emulated TDX last: a stock kernel under it is not supported yet (bounded by LX_TIMEOUT).
if verifier v; then
  # shellcheck disable=SC2086
  lx linux-tdx 0 "CVM-WORKLOAD-MARKER" --config /la/vm-tdx.toml $relay
fi
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
if verifier v; then
  # shellcheck disable=SC2086
  lx linux-snp 0 "CVM-WORKLOAD-MARKER" --config /la/vm-snp.toml $relay
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
# Emulated TDX last: a stock kernel under it is not supported yet (bounded by LX_TIMEOUT).
if verifier v; then
  # shellcheck disable=SC2086
  lx linux-tdx 0 "CVM-WORKLOAD-MARKER" --config /la/vm-tdx.toml $relay
fi
[ -n "$vpid" ] && kill "$vpid" 2>/dev/null
