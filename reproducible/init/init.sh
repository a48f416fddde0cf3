#!/bin/busybox sh
# Sentinel's development init (bootstrap ramdisk). It keeps nitro-cli's contract, so the same customer
# ramdisk runs under AWS's init and this one: the customer ramdisk holds /rootfs, /cmd (one argument
# per line) and /env (one NAME=value per line); init enters /rootfs and runs /cmd with exactly /env.
/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
ip link set lo up 2>/dev/null
echo "sentinel-init: loading modules"
while IFS= read -r mod; do
    [ -n "$mod" ] || continue
    insmod "/modules/$mod.ko" || echo "sentinel-init: insmod $mod failed"
done < /modules/order
for d in proc sys dev tmp run; do mkdir -p "/rootfs/$d"; done
mount -t proc proc /rootfs/proc
mount -t sysfs sysfs /rootfs/sys
mount -t devtmpfs devtmpfs /rootfs/dev
mount -t tmpfs tmpfs /rootfs/tmp
mount -t tmpfs tmpfs /rootfs/run
set --
while IFS= read -r arg || [ -n "$arg" ]; do set -- "$@" "$arg"; done < /cmd
[ "$#" -gt 0 ] || { echo "sentinel-init: /cmd is empty"; poweroff -f; }
# Runs its arguments inside /rootfs with exactly the environment in /env. Always call it with `&`:
# it execs, so the background job's PID is the payload's own and signals reach it directly.
in_rootfs() {
    for name in $(/bin/env | /bin/sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*\)=.*/\1/p'); do
        unset "$name" 2>/dev/null
    done
    while IFS= read -r kv || [ -n "$kv" ]; do
        [ -n "$kv" ] && export "$kv"
    done < /env
    cd /
    exec /bin/chroot /rootfs "$@"
}
echo "sentinel-init: starting $1"
in_rootfs "$@" &
payload=$!
# Under QEMU (virtio-serial ports present; never on Nitro hardware) the development glue self-checks
# the signer over vsock_loopback, relays the host's port to it and waits for a power-off request.
if [ -n "$(ls /sys/class/virtio-ports 2>/dev/null)" ]; then
    in_rootfs "$1" -m enclave.devboot &
    wait $!
    echo "sentinel-init: devboot exited with status $?"
    kill -TERM "$payload" 2>/dev/null
fi
wait "$payload"
echo "sentinel-init: payload exited with status $?"
sync
poweroff -f
