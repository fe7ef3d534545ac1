# gdbinit: for humans debugging the piix3 guest. `make debug` (piix3 debug) starts QEMU paused
# with the default disk and runs: gdb -x gdbinit -ex 'target remote SOCK' -ex piix3-park kernel.elf
# Type `piix3-help` for the commands below.
set pagination off
set confirm off
set print pretty on
# A hung driver call is abandoned with Ctrl-C and the stack restored.
set unwindonsignal on

define piix3-park
  tbreak harness_ready
  continue
end
document piix3-park
Run the guest to harness_ready, the park point where the driver is initialised and calls are safe.
end

define ata-drives
  print ata_drives
end
document ata-drives
Print what the driver found on drives 0..3 (present, lba48, sectors, model).
end

define ata-last-error
  print ata_last_error
end
document ata-last-error
Print the driver's record of its last failure: code, command, status, error, LBA, phase.
end

define sector
  if $argc != 2
    echo usage: sector DRIVE LBA\n
  else
    set $piix3_rc = ata_read($arg0, (unsigned long long)$arg1, 1, harness_xfer_buf, 0)
    if $piix3_rc != 0
      printf "ata_read failed: %d (see ata-last-error)\n", $piix3_rc
    else
      x/512xb harness_xfer_buf
    end
  end
end
document sector
sector DRIVE LBA: read one sector through the driver (PIO) and hexdump it. Call it from harness_ready.
end

define piix3-help
  echo piix3 commands:\n
  echo   piix3-park        run to harness_ready (the park point)\n
  echo   ata-drives        drives the driver found\n
  echo   ata-last-error    the driver's last failure record\n
  echo   sector DRIVE LBA  hexdump one sector read through the driver\n
  echo driver calls, from harness_ready: call ata_identify(0, harness_xfer_buf), ata_flush(0), ...\n
end
