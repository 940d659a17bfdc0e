# scenarios: bench-boot bench-net bench-ratelimit
# nested: benchmark only
# Benchmarks, cvm against QEMU (-M microvm, -accel kvm, virtio-mmio devices, qboot) with the
# same guest kernel and initramfs (60-bench.build) inside the same outer VM; sourced by the
# outer /init. Emulated-CPU figures (the outer VM runs under QEMU TCG): ratios only.
# - bench-boot: BENCH_RUNS (scripts/bench-nested sets 3) alternating runs of each VMM
#   without a NIC: seconds from starting the VMM to the guest's /init marker
#   (CVM-GUEST-INIT), to the workload marker (CVM-BENCH-MARK, after the virtio modules are
#   loaded) and to the VMM's exit after the guest's power-off, as the outer side sees the
#   serial lines arrive; median. In CI (BENCH_RUNS unset: 0) the boots of the two
#   bench-net runs (with a NIC) are the figures, one run each, to keep the tier short.
# - bench-net: guest <-> outer host over virtio-net on a tap (QEMU: virtio-net-device, tap
#   backend, vhost=off): bulk TCP each way (Mbit/s) and 16-byte UDP datagrams guest -> host
#   (received per second), iperf3, 5 s each (60-bench.build: how the rates are taken).
# - bench-ratelimit: cvm with tx-bps, rx-bps and rx-pps on the interface; the rates iperf3
#   measures inside Linux must each be within 10% of the setting (pass/fail): bulk TCP
#   guest -> host for tx-bps (as frame bits: the goodput times 1514/1448, a full-size
#   segment's frame over its payload; the limiter counts frame bytes), 1400-byte UDP datagrams host -> guest for rx-bps (as frame bits: the
#   datagrams received per second times 1442 bytes) and 16-byte ones for rx-pps, both sent
#   faster than the limit. Bulk TCP host -> guest under rx-bps is reported, not checked.
# One "NESTED-BENCH ..." line per figure; scripts/nested/run prints them. Each result line
# has rc= (cvm's exit code in its last launch for that result), as cvm/tests/nested_linux.rs
# expects of every scenario.
bench_runs=$(cat /bench/runs 2>/dev/null || echo 0)
bench_tap=bench0
bench_mac=02:00:00:00:02:02
# The limits of bench-ratelimit: well below the unlimited rates of the tier's debug `cvm`
# (measured on a loaded machine, README "Benchmarks on the nested tier": 1.3-41 Mbit/s
# out, 2.6-33 Mbit/s in, 105-622 small datagrams/s out), so the limit, not the emulated
# CPU, sets the rate.
# The rx-bps check's 1400-byte datagrams (400 kbit/s: 35/s) stay under rx-pps, and the rx-pps
# check's 16-byte ones (60/s: 28 kbit/s of frames) under rx-bps.
bench_tx_bps=300000
bench_rx_bps=400000
bench_rx_pps=60
# The outer senders' rates (bits/s of UDP payload): twice the byte limit, and four times
# the packet limit in 16-byte datagrams.
bench_udp_bps=$((bench_rx_bps * 2))
bench_udp_pps=$((bench_rx_pps * 4 * 16 * 8))

# bench_vm LABEL VMM CMDLINE-WORDS [net[,LIMITS]]: boots the bench initramfs under VMM (cvm
# or qemu), with a virtio-net interface on the tap when asked (cvm: with --net's LIMITS and
# no network policy, --net-unfiltered, as QEMU has none); sets bench_rc, bench_init,
# bench_mark, bench_total (seconds or "none").
bench_vm() {
  label=$1 vmm=$2 word=$3 netargs=${4:-}
  rm -f /tmp/bench-rc /tmp/bench-init /tmp/bench-mark /tmp/bench-clock "/tmp/log-bench-$label"
  cmdline="console=ttyS0 quiet panic=-1 $word"
  t0=$(now)
  if [ "$vmm" = cvm ]; then
    set -- /bench/cvm launch --tee none --vcpus 1 --memory 256M --firmware /bench/firmware.fd \
      --kernel /guest/vmlinuz --initrd /bench/initrd.cpio --cmdline "$cmdline"
    [ -n "$netargs" ] && set -- "$@" --net "tap=$bench_tap,mac=$bench_mac${netargs#net}" --net-unfiltered
  else
    set -- /usr/bin/qemu-system-x86_64 -M microvm,x-option-roms=off,pit=off,pic=off,rtc=on \
      -accel kvm -cpu host -smp 1 -m 256M -nodefaults -no-user-config -display none \
      -monitor none -serial stdio -no-reboot -kernel /guest/vmlinuz -initrd /bench/initrd.cpio \
      -append "$cmdline"
    [ -n "$netargs" ] && set -- "$@" \
      -netdev "tap,id=n0,ifname=$bench_tap,script=no,downscript=no,vhost=off" \
      -device "virtio-net-device,netdev=n0,mac=$bench_mac"
  fi
  { timeout -s KILL 240 "$@" </dev/null 2>&1; echo $? >/tmp/bench-rc; } |
    while IFS= read -r line; do
      case "$line" in
        *CVM-GUEST-INIT*) [ -e /tmp/bench-init ] || now >/tmp/bench-init ;;
        *CVM-BENCH-MARK*) [ -e /tmp/bench-mark ] || now >/tmp/bench-mark ;;
        *CVM-BENCH-CLOCK*) echo "$(now) ${line##*CVM-BENCH-CLOCK }" >>/tmp/bench-clock ;;
      esac
      echo "$line" >>"/tmp/log-bench-$label"
      case "$line" in *CVM-BENCH-*) echo "bench $label: $line" ;; esac
    done
  t1=$(now)
  bench_rc=$(cat /tmp/bench-rc 2>/dev/null || echo none)
  bench_init=none bench_mark=none
  [ -e /tmp/bench-init ] && bench_init=$(awk -v a="$t0" -v b="$(cat /tmp/bench-init)" 'BEGIN { printf "%.2f", b - a }')
  [ -e /tmp/bench-mark ] && bench_mark=$(awk -v a="$t0" -v b="$(cat /tmp/bench-mark)" 'BEGIN { printf "%.2f", b - a }')
  bench_total=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
  if [ "$bench_rc" != 0 ] || [ "$bench_mark" = none ]; then
    echo "bench $label: $vmm exited $bench_rc; its last lines:"
    tail -n 15 "/tmp/log-bench-$label" | sed "s/^/bench $label: /"
  fi
}

# bench_boot_record VMM WHAT [noexit]: prints the last bench_vm's boot times and keeps them
# for the medians (a failed boot fails bench-boot); noexit: not its time to the exit (a
# network run's includes its tests).
bench_boot_record() {
  echo "NESTED-BENCH $2 vmm=$1 rc=$bench_rc init=$bench_init mark=$bench_mark exit=$bench_total"
  if [ "$bench_rc" = 0 ] && [ "$bench_init" != none ] && [ "$bench_mark" != none ]; then
    echo "$bench_init" >>"/tmp/bench-$1-init"
    echo "$bench_mark" >>"/tmp/bench-$1-mark"
    [ "${3:-}" = noexit ] || echo "$bench_total" >>"/tmp/bench-$1-total"
  else
    boot_ok=no
  fi
}

# bench_median FILE: the median of the numbers in FILE, one per line ("none" if empty).
bench_median() {
  sort -n "$1" 2>/dev/null | awk '{ v[NR] = $1 } END {
    if (NR == 0) { print "none"; exit }
    if (NR % 2) printf "%.2f\n", v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# bench_result LABEL TEST KEY: the value of KEY= on the guest's result line for TEST.
bench_result() {
  grep -a "CVM-BENCH-RESULT $2 " "/tmp/log-bench-$1" | tail -n 1 | tr -d '\r' |
    sed -n "s/.* $3=\([0-9.]*\).*/\1/p"
}

# bench_limit_run: one cvm launch with the limits; sets checks ("<figures> PASS|LOW|FAIL":
# LOW when a rate is under 90% and none over 110%), tcp_rx and bench_rc.
bench_limit_run() {
  bench_vm "limit-cvm" cvm "cvm.bench=limit cvm.bench_udp_bps=$bench_udp_bps cvm.bench_udp_pps=$bench_udp_pps" \
    "net,tx-bps=$bench_tx_bps,rx-bps=$bench_rx_bps,rx-pps=$bench_rx_pps"
  tx_goodput=$(bench_result limit-cvm tcp-tx mbps)
  tx=
  [ -n "$tx_goodput" ] && tx=$(awk -v m="$tx_goodput" 'BEGIN { printf "%.4f", m * 1514 / 1448 }')
  tcp_rx=$(bench_result limit-cvm tcp-rx mbps)
  rx_dgrams=$(bench_result limit-cvm udp-rx-bytes pps)
  rx=
  [ -n "$rx_dgrams" ] && rx=$(awk -v p="$rx_dgrams" 'BEGIN { printf "%.4f", p * (1400 + 8 + 20 + 14) * 8 / 1e6 }')
  pps=$(bench_result limit-cvm udp-rx-pps pps)
  # The guest's clock rate against the outer VM's (whose clock the limiter runs on), from
  # the two CVM-BENCH-CLOCK lines around the tests: guest seconds per outer second. A
  # guest rate times it is the rate per outer second.
  clock=$(tr -d '\r' </tmp/bench-clock 2>/dev/null | awk 'NR == 1 { o = $1; g = $2 } END {
    if (NR >= 2 && $1 > o) printf "%.4f", ($2 - g) / ($1 - o); else print 1 }')
  tx=$(awk -v m="${tx:-}" -v c="$clock" 'BEGIN { if (m != "") printf "%.4f", m * c }')
  rx=$(awk -v m="${rx:-}" -v c="$clock" 'BEGIN { if (m != "") printf "%.4f", m * c }')
  pps=$(awk -v m="${pps:-}" -v c="$clock" 'BEGIN { if (m != "") printf "%.1f", m * c }')
  checks=$(awk -v tx="${tx:-}" -v rx="${rx:-}" -v pps="${pps:-}" -v stx="$bench_tx_bps" \
    -v srx="$bench_rx_bps" -v spps="$bench_rx_pps" -v clock="$clock" 'function chk(name, got, want, unit,  r) {
      if (got == "") { printf "%s=none(setting %s %s) ", name, want, unit; bad = 1; return }
      r = got / want
      printf "%s=%s/%s%s(%.1f%%) ", name, got, want, unit, r * 100
      if (r > 1.1) bad = 1
      else if (r < 0.9) low = 1
    }
    BEGIN {
      printf "guest-clock=%s ", clock
      chk("tx", tx, stx / 1e6, "Mbit/s"); chk("rx", rx, srx / 1e6, "Mbit/s"); chk("rx-pps", pps, spps, "pps")
      print (bad ? "FAIL" : low ? "LOW" : "PASS")
    }')
}

bench() {
  echo "NESTED-BEGIN bench"
  insmod /modules/bench/tun.ko 2>/dev/null || true
  /sbin/ip2 tuntap add "$bench_tap" mode tap
  /sbin/ip2 addr add 10.0.2.1/24 dev "$bench_tap"
  /sbin/ip2 link set "$bench_tap" up
  iperf3 -s -D -B 10.0.2.1 -f k --logfile /tmp/iperf3-server.log
  echo "NESTED-BENCH runs=$bench_runs; cvm: $(cat /bench/cvm-path); QEMU: $(/usr/bin/qemu-system-x86_64 --version | head -n 1)"
  echo "NESTED-BENCH guest: 1 vCPU, 256 MiB, the tier's guest kernel; outer VM: QEMU TCG (emulated AMD SVM), 2 vCPUs"

  # Boot: alternate the VMMs run by run (none in CI: the network runs' boots count).
  boot_ok=yes cvm_rc=none net_cvm_rc=none
  for v in cvm qemu; do rm -f "/tmp/bench-$v-init" "/tmp/bench-$v-mark" "/tmp/bench-$v-total"; done
  r=1
  while [ "$r" -le "$bench_runs" ]; do
    for v in cvm qemu; do
      bench_vm "boot-$v-$r" "$v" cvm.bench=boot
      [ "$v" = cvm ] && cvm_rc=$bench_rc
      bench_boot_record "$v" "boot run=$r"
    done
    r=$((r + 1))
  done

  # Throughput, unlimited (the boot of each is also a boot run, with a NIC).
  net_ok=yes
  for v in cvm qemu; do
    bench_vm "net-$v" "$v" cvm.bench=net net
    if [ "$v" = cvm ]; then
      net_cvm_rc=$bench_rc
      [ "$bench_runs" -eq 0 ] && cvm_rc=$bench_rc
    fi
    # Its boot counts for the medians only when there were no boot-only runs (CI).
    [ "$bench_runs" -eq 0 ] && bench_boot_record "$v" "boot with-nic" noexit
    for t in tcp-tx tcp-rx udp-tx; do
      mbps=$(bench_result "net-$v" "$t" mbps)
      pps=$(bench_result "net-$v" "$t" pps)
      [ -n "$mbps" ] || net_ok=no
      eval "net_${v}_$(echo "$t" | tr - _)_mbps=\${mbps:-none} net_${v}_$(echo "$t" | tr - _)_pps=\${pps:-none}"
    done
    [ "$bench_rc" = 0 ] || net_ok=no
  done
  n=$(cat /tmp/bench-cvm-init 2>/dev/null | wc -l)
  echo "NESTED-BENCH | boot (s, median of $n) | to /init | to marker | to exit |"
  for v in cvm qemu; do
    echo "NESTED-BENCH | $v | $(bench_median "/tmp/bench-$v-init") | $(bench_median "/tmp/bench-$v-mark") | $(bench_median "/tmp/bench-$v-total") |"
  done
  result=FAIL
  [ "$boot_ok" = yes ] && result=PASS
  echo "NESTED-RESULT bench-boot $result rc=$cvm_rc runs=$n"
  echo "NESTED-BENCH | network | TCP guest->host Mbit/s | TCP host->guest Mbit/s | UDP 16 B guest->host pps |"
  for v in cvm qemu; do
    eval "tx=\$net_${v}_tcp_tx_mbps rx=\$net_${v}_tcp_rx_mbps pps=\$net_${v}_udp_tx_pps"
    echo "NESTED-BENCH | $v | $tx | $rx | $pps |"
  done
  result=FAIL
  [ "$net_ok" = yes ] && result=PASS
  echo "NESTED-RESULT bench-net $result rc=$net_cvm_rc"

  # Rate limits, cvm only: each measured rate within 10% of its setting. A rate above
  # 110% fails at once; when every rate is at most 110% but one is under 90%, the run is
  # repeated once (an emulated guest starved of CPU for longer than the bucket's 100 ms
  # burst sends less than the limit allows: the tier's machine may be busy).
  attempt=1
  while :; do
    bench_limit_run
    echo "NESTED-BENCH ratelimit attempt=$attempt $checks"
    echo "NESTED-BENCH ratelimit (not checked) TCP host->guest under rx-bps=$bench_rx_bps: ${tcp_rx:-none} Mbit/s"
    case "$checks" in *LOW) [ "$attempt" -lt 2 ] && [ "$bench_rc" = 0 ] && { attempt=2; continue; } ;; esac
    break
  done
  result=FAIL
  [ "$bench_rc" = 0 ] && case "$checks" in *PASS) result=PASS ;; esac
  echo "NESTED-RESULT bench-ratelimit $result rc=$bench_rc attempt=$attempt $checks"
  # shellcheck disable=SC2046
  kill $(pidof iperf3) 2>/dev/null || true
}
bench
