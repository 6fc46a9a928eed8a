# KruxOS A/B boot selection with trial boots, for U-Boot.
#
# Build:   mkimage -A arm -T script -C none -d boot.cmd boot.scr
# Install: boot.scr at the root of the boot partition, where the standard boot
#          scan (distro_bootcmd / bootflow) finds and runs it.
# reconciler/sim/boot_uboot.py emulates exactly this logic: change both together.
#
#   KRUXOS_DEFAULT   A|B     the good slot, booted when no trial is armed
#   KRUXOS_TRIAL     A|B     the slot armed for a trial boot (absent: none)
#   KRUXOS_TRIES     0..9    trial boots left
#   KRUXOS_A/_B      good|staged|bad|empty
#   KRUXOS_FALLBACK  why the last trial was given up ("B: trial tries exhausted")
#
# Where these variables are stored is the board's choice (kruxos_store):
#   (unset)  U-Boot's own environment, saved with `saveenv`: use a redundant
#            env (CONFIG_SYS_REDUNDAND_ENVIRONMENT) so a power cut during the
#            save leaves the previous copy; the reconciler writes the same
#            env through /etc/fw_env.config.
#   fat      a file uboot.env (16 KiB, U-Boot's binary env format, one copy)
#            on this boot partition, read with `env import` and written with
#            `env export` + `fatwrite`. fatwrite rewrites the file in place,
#            which is not power-fail safe: for test rigs and boards whose env
#            storage cannot be written.
# How a slot is booted is the board's too: `run kruxos_boot_A` / `kruxos_boot_B`
# (load that slot's kernel, device tree and initrd, then bootz/booti).

setenv kruxos_vars KRUXOS_DEFAULT KRUXOS_TRIAL KRUXOS_TRIES KRUXOS_A KRUXOS_B KRUXOS_FALLBACK
setenv kruxos_part ${devtype} ${devnum}:${distro_bootpart}
if test -z "${kruxos_envaddr}"; then setenv kruxos_envaddr ${kernel_addr_r}; fi

if test "${kruxos_store}" = "fat"; then
    # Start from nothing: a missing or damaged file must not leave stale values.
    setenv KRUXOS_DEFAULT; setenv KRUXOS_TRIAL; setenv KRUXOS_TRIES
    setenv KRUXOS_A; setenv KRUXOS_B; setenv KRUXOS_FALLBACK
    if load ${kruxos_part} ${kruxos_envaddr} uboot.env; then
        env import -c ${kruxos_envaddr} ${filesize} ${kruxos_vars}
    fi
    setenv kruxos_save "env export -c -s 0x4000 ${kruxos_envaddr} ${kruxos_vars} && fatwrite ${kruxos_part} ${kruxos_envaddr} uboot.env 0x4000"
else
    setenv kruxos_save saveenv
fi

# The default is the fallback for everything below, so settle it first.
# Anything but B (missing, empty, damaged) boots A, the factory slot.
if test "${KRUXOS_DEFAULT}" = "B"; then setenv kruxos_slot B; else setenv kruxos_slot A; fi

# A trial is armed only when KRUXOS_TRIAL names a slot exactly.
setenv kruxos_trial
if test "${KRUXOS_TRIAL}" = "A"; then setenv kruxos_trial A; fi
if test "${KRUXOS_TRIAL}" = "B"; then setenv kruxos_trial B; fi

if test -n "${kruxos_trial}"; then
    # Count one try down BEFORE booting the trial slot: a kernel that hangs
    # or panics never gets to count, and a watchdog reset is just another
    # boot that lands here. Only 1..9 count (setexpr works in hex, so a
    # damaged value such as "a" must not be taken for ten).
    setenv kruxos_left
    for n in 1 2 3 4 5 6 7 8 9; do
        if test "${KRUXOS_TRIES}" = "${n}"; then setexpr kruxos_left ${n} - 1; fi
    done

    if test -n "${kruxos_left}"; then
        # Boot the trial only once the lower count is saved; if it cannot be
        # saved the try would be free, and a hanging kernel would be tried
        # forever: boot the default instead.
        setenv KRUXOS_TRIES ${kruxos_left}
        if run kruxos_save; then
            setenv kruxos_slot ${kruxos_trial}
        else
            echo "KruxOS: cannot save the try counter; booting default slot ${kruxos_slot}"
        fi
    else
        # Tries used up (0, absent or damaged): give up on the trial slot.
        # Mark it bad and clear the trial so the next boots go straight to
        # the default, and leave the reason for the reconciler to report.
        if test "${kruxos_trial}" = "A"; then setenv KRUXOS_A bad; else setenv KRUXOS_B bad; fi
        setenv KRUXOS_FALLBACK "${kruxos_trial}: trial tries exhausted"
        setenv KRUXOS_TRIAL
        run kruxos_save
    fi
fi
# No trial armed: boot the default with no counting. Only the reconciler's
# confirm (after its health checks pass) makes a slot the default.

echo "KRUXOS-BOOT slot=${kruxos_slot}"
if test "${kruxos_slot}" = "B"; then run kruxos_boot_B; else run kruxos_boot_A; fi
echo "KruxOS: slot ${kruxos_slot} did not boot"
