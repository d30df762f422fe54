#!/bin/sh
# PID 1 of the lab's kernel VM: mount the pseudo file systems, load the network modules, run the requested
# command through guest_run.py, power off. Everything it needs is in the initramfs (see lab/vmimage.py).
export PATH=/sbin:/usr/sbin:/bin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm /run /tmp
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
mkdir -p /run/netns /var/lib /var/run
ln -sf /proc/self/fd /dev/fd 2>/dev/null
read -r up _ < /proc/uptime; echo "vm-init: file systems mounted at $up s"
# Modules in dependency order (computed from the modules' own dependency lists when the image was built).
kver=$(uname -r)
while read -r mod; do
  insmod "/lib/modules/$kver/$mod" 2>/dev/null || echo "vm-init: cannot load $mod" >/dev/console
done < /etc/vm/modules.load
read -r up _ < /proc/uptime; echo "vm-init: modules loaded at $up s"
echo /sbin/modprobe > /proc/sys/kernel/modprobe
/sbin/ip link set lo up
hostname overlay-vm
read -r up _ < /proc/uptime
echo "@@VM-READY $up@@"
/usr/bin/python3 -S /etc/vm/guest_run.py /etc/vm/run.json
sync
poweroff -f
