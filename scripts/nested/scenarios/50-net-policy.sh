# scenarios: netpol-allowed netpol-denied netpol-removed
# Two stock Linux guests, A and B, on their own taps on one bridge, each under `cvm launch`
# with a [network_policy]: A may reach B on TCP 8080 only. The allowed connection
# succeeds (netpol-allowed); A -> B:2222, B -> A and a spoofed source from A are dropped
# and counted in the policies' counters (netpol-denied: the `net-policy-denied` log
# events' totals); when A's cvm exits its table is gone, and none is left when B's has
# exited too (netpol-removed). B boots first, A once B's network is up. Sourced by the
# outer /init; 50-net-policy.build ships what it needs.
netpol_conf() { # NAME TAP MAC ADDR RULES
  cat >"/tmp/netpol-$1.toml" <<TOML
version = 1
tee = "none"
memory = "256M"
[boot]
kernel = "/guest/vmlinuz"
initrd = "/guest/initrd.cpio"
cmdline = "console=ttyS0 quiet panic=-1 cvm.netpol=$1"
[network_policy]
name = "$1"
[[network_policy.interfaces]]
tap = "$2"
mac = "$3"
addresses = ["$4"]
$5
TOML
}

netpol_total() { # LOG COUNTER: the last total the supervisor logged
  grep -a 'net-policy-denied' "$1" | sed -n "s/.*total_$2=\([0-9]*\).*/\1/p" | tail -n 1
}

netpol_run() { # NAME TAP MAC: cvm launch (killed after 360 s), its output on the console (prefixed) and in a log
  { timeout -s KILL 360 /cvm/cvm launch --config "/tmp/netpol-$1.toml" --net "tap=$2,mac=$3" 2>&1
    echo $? >"/tmp/rc-netpol-$1"; } |
    while IFS= read -r line; do
      echo "netpol-$1: $line"
      echo "$line" >>"/tmp/log-netpol-$1"
    done
}

netpol() {
  echo "NESTED-BEGIN netpol"
  for m in llc stp bridge tun nfnetlink libcrc32c nf_tables nft_objref; do
    insmod /modules/netpol/$m.ko || echo "NETPOL-OUTER insmod $m failed"
  done
  /sbin/ip2 link add cvmbr type bridge
  /sbin/ip2 link set cvmbr up
  for t in cvma cvmb; do
    /sbin/ip2 tuntap add "$t" mode tap
    /sbin/ip2 link set "$t" master cvmbr
    /sbin/ip2 link set "$t" up
  done
  netpol_conf a cvma 02:00:00:00:00:0a 10.0.0.2 \
    'egress = [{ vm = "b", proto = "tcp", ports = [8080] }]'
  netpol_conf b cvmb 02:00:00:00:00:0b 10.0.0.3 \
    'ingress = [{ vm = "a", proto = "tcp", ports = [8080] }]'
  t0=$(now)
  rm -f /tmp/rc-netpol-a /tmp/rc-netpol-b /tmp/log-netpol-a /tmp/log-netpol-b
  # One guest after the other: B first, A once B's network is up (B waits for A). Booting
  # both at once made one of them triple-fault in one run of many under QEMU TCG's
  # nested SVM (README "Linux guests and the nested-KVM tier"); one at a time it never did.
  netpol_run b cvmb 02:00:00:00:00:0b &
  bpid=$!
  i=0
  until grep -aq "NETPOL-b eth0=" /tmp/log-netpol-b 2>/dev/null; do
    i=$((i + 1))
    if [ "$i" -gt 240 ] || [ -e /tmp/rc-netpol-b ]; then
      echo "NETPOL-OUTER guest B did not bring its network up (rc=$(cat /tmp/rc-netpol-b 2>/dev/null || echo running) after ${i} s)"
      break
    fi
    sleep 1
  done
  echo "NETPOL-OUTER B's network up after ${i} s; starting A"
  netpol_run a cvma 02:00:00:00:00:0a &
  apid=$!
  wait $apid
  arc=$(cat /tmp/rc-netpol-a 2>/dev/null || echo none)
  tables_after_a=$(nft list tables netdev 2>&1 | tr '\n' ' ')
  wait $bpid
  brc=$(cat /tmp/rc-netpol-b 2>/dev/null || echo none)
  tables_after_b=$(nft list tables netdev 2>&1 | tr '\n' ' ')
  t1=$(now)
  echo "NETPOL-OUTER tables after A: $tables_after_a"
  echo "NETPOL-OUTER tables after B: $tables_after_b"
  total_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')

  result=FAIL
  [ "$arc" = 0 ] && grep -aq "NETPOL-A allowed=ok" /tmp/log-netpol-a && result=PASS
  echo "NESTED-RESULT netpol-allowed $result rc=$arc total=$total_s"

  a_egress=$(netpol_total /tmp/log-netpol-a egress_denied)
  a_spoofed=$(netpol_total /tmp/log-netpol-a spoofed)
  b_egress=$(netpol_total /tmp/log-netpol-b egress_denied)
  result=FAIL
  if grep -aq "NETPOL-A other-port=blocked" /tmp/log-netpol-a &&
    grep -aq "NETPOL-A spoofed=blocked" /tmp/log-netpol-a &&
    grep -aq "NETPOL-B a=blocked" /tmp/log-netpol-b &&
    [ "${a_egress:-0}" -ge 1 ] && [ "${a_spoofed:-0}" -ge 1 ] && [ "${b_egress:-0}" -ge 1 ]; then
    result=PASS
  fi
  echo "NESTED-RESULT netpol-denied $result rc=$arc a_egress_denied=${a_egress:-none} a_spoofed=${a_spoofed:-none} b_egress_denied=${b_egress:-none}"

  # A's table is gone once A's cvm has exited (B may have stopped first or not), and no
  # table is left once both have.
  result=FAIL
  case "$tables_after_a" in
    *cvm_a_*) ;;
    *) case "$tables_after_b" in *cvm_*) ;; *) [ "$brc" = 0 ] && result=PASS ;; esac ;;
  esac
  echo "NESTED-RESULT netpol-removed $result rc=$brc"
}
netpol
