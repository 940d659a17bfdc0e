# scenarios: boot-1vcpu boot-2vcpu panic
# A stock kernel reaches its /init with 1 and 2 vCPUs under `cvm launch --tee none`; a guest
# panic (panic=-1 makes Linux reset) is a failure: cvm exits 1. Sourced by the outer /init.
scenario boot-1vcpu 1 0 "CVM-GUEST-INIT cpus=1 " ""
scenario boot-2vcpu 2 0 "CVM-GUEST-INIT cpus=2 " ""
# panic: the guest says it panics (its /init, before sysrq-c), and cvm reports the reset.
scenario panic 1 1 "guest requested a reset" "cvm.test=panic" "CVM-GUEST-PANICKING"
