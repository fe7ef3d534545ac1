# gdbinit: for humans debugging the piix3 guest. `make debug` (piix3 debug) starts QEMU paused
# with the default disk and runs: gdb -x gdbinit -ex 'target remote SOCK' -ex piix3-park kernel.elf
# Type `piix3-help` (or `help user-defined`) for the commands below.
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

python
# The ATA/PCI commands, in GDB's Python. They decode with the harness's own modules
# (harness/regs.py, identify.py, portio/access.py), loaded without the package's __init__: GDB's Python
# is the system's and lacks the harness's dependencies. GDB cannot execute in/out itself, so
# port reads go through the guest helpers harness_inb/harness_inl/harness_pci_read32.
import importlib
import os
import sys
import types

import gdb


def _piix3_repo():
    """The repository: $PIIX3_REPO, else three levels above build/guest/kernel.elf, else cwd."""
    candidates = [os.environ.get("PIIX3_REPO", "")]
    kernel = gdb.current_progspace().filename or ""
    if kernel:
        candidates.append(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(kernel)))))
    candidates.append(os.getcwd())
    for root in candidates:
        if root and os.path.isfile(os.path.join(root, "harness", "portio", "access.py")):
            return root
    raise gdb.GdbError("piix3: cannot find the repository (harness/portio/access.py); set PIIX3_REPO")


def _piix3_module(name):
    """harness.<name>, imported without running harness/__init__.py."""
    if "harness" not in sys.modules:
        pkg = types.ModuleType("harness")
        pkg.__path__ = [os.path.join(_piix3_repo(), "harness")]
        sys.modules["harness"] = pkg
    return importlib.import_module("harness." + name)


def _piix3_int(expr):
    return int(gdb.parse_and_eval(expr)) & 0xFFFFFFFF


def _piix3_args(arg, count):
    words = gdb.string_to_argv(arg)
    if len(words) > count:
        raise gdb.GdbError(f"too many arguments: {arg}")
    return words


def _piix3_channel(arg):
    words = _piix3_args(arg, 1)
    ch = int(words[0], 0) if words else 0
    if ch not in (0, 1):
        raise gdb.GdbError("channel is 0 (primary) or 1 (secondary)")
    ports = _piix3_module("portio.access")
    try:  # where the driver put the channel (native-mode channels move)
        cmd, ctrl, bm = (_piix3_int(f"'ata.c'::channels[{ch}].{f}") & 0xFFFF for f in ("cmd", "ctrl", "bm"))
    except gdb.error:
        cmd, ctrl, bm = 0, 0, 0
    if not cmd:
        cmd = (ports.PRIMARY_CMD, ports.SECONDARY_CMD)[ch]
        ctrl = (ports.PRIMARY_CTRL, ports.SECONDARY_CTRL)[ch]
    return ch, cmd, ctrl, bm


def _piix3_port_map():
    ports = _piix3_module("portio.access")
    try:
        bm = _piix3_int("'ata.c'::channels[0].bm") & 0xFFFC
    except gdb.error:
        bm = 0
    return ports.PortMap(bm or ports.BMIBA_DEFAULT)


class _AtaStatus(gdb.Command):
    """ata-status [CHANNEL]: status and error registers of channel 0 or 1, decoded.
    Status is read as alternate status, so no interrupt is acknowledged. CHANNEL is 0
    (primary, the default) or 1 (secondary)."""

    def __init__(self):
        super().__init__("ata-status", gdb.COMMAND_USER)

    def invoke(self, arg, from_tty):
        regs = _piix3_module("regs")
        ch, cmd, ctrl, _ = _piix3_channel(arg)
        status = _piix3_int(f"harness_inb({ctrl})")
        error = _piix3_int(f"harness_inb({cmd + 1})")
        name = ("primary", "secondary")[ch]
        gdb.write(
            f"{name} channel (cmd {cmd:#x}, ctrl {ctrl:#x}): status {status:#04x} "
            f"[{regs.decode_status(status)}]  error {error:#04x} [{regs.decode_error(error)}]\n"
        )


class _AtaRegs(gdb.Command):
    """ata-regs [CHANNEL]: every task-file and bus-master register of a channel, decoded.
    Status is read as alternate status (reading Status would acknowledge an interrupt)."""

    def __init__(self):
        super().__init__("ata-regs", gdb.COMMAND_USER)

    def invoke(self, arg, from_tty):
        pmap = _piix3_port_map()
        ch, cmd, ctrl, bm = _piix3_channel(arg)
        rows = [(cmd + n, 1) for n in range(1, 7)] + [(ctrl, 1)]
        if bm:
            rows += [(bm, 1), (bm + 2, 1), (bm + 4, 4)]
        for port, width in rows:
            value = _piix3_int(f"harness_inl({port})" if width == 4 else f"harness_inb({port})")
            decoded = pmap.decode("in", port, width, value)
            label = pmap.register(port, "in")
            gdb.write(f"  {port:#06x} {label:<26} {value:#0{2 + 2 * width}x}  {decoded}\n".rstrip() + "\n")


class _AtaIdentify(gdb.Command):
    """ata-identify [DRIVE]: IDENTIFY DEVICE through the driver: model, serial, size, modes.
    Calls ata_identify(DRIVE, harness_xfer_buf) and decodes the data. Call it from
    harness_ready (piix3-park)."""

    def __init__(self):
        super().__init__("ata-identify", gdb.COMMAND_USER)

    def invoke(self, arg, from_tty):
        words = _piix3_args(arg, 1)
        drive = int(words[0], 0) if words else 0
        regs = _piix3_module("regs")
        identify = _piix3_module("identify")
        rc = int(gdb.parse_and_eval(f"ata_identify({drive}, harness_xfer_buf)"))
        if rc != 0:
            try:
                code = regs.AtaCode(rc)
                raise gdb.GdbError(f"ata_identify({drive}) failed: {code.name} ({code.meaning})")
            except ValueError:
                raise gdb.GdbError(f"ata_identify({drive}) returned {rc}") from None
        buf = _piix3_int("(unsigned)harness_xfer_buf")
        data = bytes(gdb.selected_inferior().read_memory(buf, identify.IDENTIFY_BYTES))
        info = identify.parse_identify(drive, data)
        gdb.write(
            f"drive {drive}: {info.model}\n"
            f"  serial {info.serial}, firmware {info.firmware}\n"
            f"  {info.sectors} sectors ({info.sectors * 512 / 2**20:.1f} MiB), "
            f"LBA48 {'yes' if info.lba48 else 'no'}, FLUSH CACHE EXT {'yes' if info.flush_cache_ext else 'no'}\n"
            f"  READ/WRITE MULTIPLE up to {info.multiple_max} sectors, MWDMA modes {list(info.mwdma_modes)}, "
            f"UDMA modes {list(info.udma_modes)}\n"
            f"  write cache {'enabled' if info.write_cache_enabled else 'disabled'}"
            f"{'' if info.write_cache_supported else ' (unsupported)'}\n"
        )


_PCI_COMMAND_BITS = ((0x1, "IO"), (0x2, "MEM"), (0x4, "MASTER"), (0x400, "INTx-DISABLE"))


class _PciIde(gdb.Command):
    """pci-ide: the PIIX3 IDE function's PCI config space: command register, BARs, timing.
    Identity, command register (I/O, bus master), programming interface (legacy/native
    channels), BAR0-4, IDE timing registers, read through harness_pci_read32."""

    def __init__(self):
        super().__init__("pci-ide", gdb.COMMAND_USER)

    def invoke(self, arg, from_tty):
        _piix3_args(arg, 0)
        bdf = int(gdb.parse_and_eval("piix3_bdf"))
        if bdf < 0:
            raise gdb.GdbError("the driver found no PIIX3 IDE function (piix3_bdf = -1)")
        cfg = {off: _piix3_int(f"harness_pci_read32({bdf}, {off})") for off in range(0, 0x48, 4)}
        vendor, device = cfg[0] & 0xFFFF, cfg[0] >> 16
        command, status = cfg[4] & 0xFFFF, cfg[4] >> 16
        progif, klass = (cfg[8] >> 8) & 0xFF, cfg[8] >> 16
        bits = "|".join(n for b, n in _PCI_COMMAND_BITS if command & b) or "-"
        where = f"{bdf >> 16 & 0xFF:02x}:{bdf >> 11 & 0x1F:02x}.{bdf >> 8 & 7}"
        chans = [
            f"{name} {'native' if progif & (1 << (2 * i)) else 'legacy'}" for i, name in enumerate(("primary", "secondary"))
        ]
        out = [
            f"PIIX3 IDE at {where}: {vendor:04x}:{device:04x} class {klass:04x} prog-if {progif:02x} "
            f"({', '.join(chans)}{', bus master' if progif & 0x80 else ''})",
            f"  command {command:#06x} [{bits}]  status {status:#06x}",
        ]
        for n in range(5):
            bar = cfg[0x10 + 4 * n]
            kind = "I/O" if bar & 1 else "memory"
            base = bar & (0xFFFFFFFC if bar & 1 else 0xFFFFFFF0)
            note = "  (bus-master IDE, BMIBA)" if n == 4 else ""
            out.append(f"  BAR{n} {bar:#010x}: {kind} {base:#x}{note}")
        for name, off in (("primary", 0x40), ("secondary", 0x42)):
            idetim = (cfg[0x40] >> (8 * (off - 0x40))) & 0xFFFF
            out.append(f"  IDETIM {name} {idetim:#06x}: IDE decode {'enabled' if idetim & 0x8000 else 'disabled'}")
        gdb.write("\n".join(out) + "\n")


def _piix3_agent():
    import __main__

    if not hasattr(__main__, "PIIX3_PORTS_AGENT"):
        gdb.execute(f"source {os.path.join(_piix3_repo(), 'harness', 'portio', 'gdb_agent.py')}")
    return __main__.PIIX3_PORTS_AGENT


_piix3_port_breaks = {}  # agent watcher id -> description


def _piix3_on_stop(event):
    agent = getattr(sys.modules.get("__main__"), "PIIX3_PORTS_AGENT", None)
    if agent is None or not agent.last_stop:
        return
    pmap = _piix3_port_map()
    for raw in agent.last_stop:
        data = bytes.fromhex(raw["data"]) if raw.get("data") else None
        ev = pmap.access(raw["direction"], raw["port"], raw["width"], raw["value"], raw["count"], data=data)
        w = raw.get("where") or {}
        gdb.write(f"port breakpoint {raw['watcher']}: {ev.brief()}\n")
        gdb.write(f"  at {w.get('function', '??')} ({w.get('file', '')}:{w.get('line')}); `bt` shows the callers\n")
    agent.last_stop = []


class _BreakPort(gdb.Command):
    """break-port PORT [in|out] [VALUE]: stop when the guest accesses an I/O port.
    PORT is a number or a name (primary, primary-ctrl, secondary, bmdma, ...); optionally only
    reads or writes, only of VALUE. Every in/out/ins/outs in the kernel is found by
    disassembly. An `out` stops before the device sees the value, an `in` right after the
    read. Without arguments: list the port breakpoints. `delete-port [N]` removes them."""

    def __init__(self):
        super().__init__("break-port", gdb.COMMAND_USER)
        self._connected = False

    def invoke(self, arg, from_tty):
        words = _piix3_args(arg, 3)
        if not words:
            for ident, text in sorted(_piix3_port_breaks.items()):
                gdb.write(f"port breakpoint {ident}: {text}\n")
            if not _piix3_port_breaks:
                gdb.write("no port breakpoints\n")
            return
        ports = _piix3_module("portio.access")
        try:
            ranges = _piix3_port_map().ranges([int(words[0], 0) if words[0][:1].isdigit() else words[0]])
        except (ValueError, ports.PortError) as exc:
            raise gdb.GdbError(str(exc)) from None
        direction, value = None, None
        for word in words[1:]:
            if word in ("in", "out"):
                direction = word
            else:
                try:
                    value = int(word, 0)
                except ValueError:
                    raise gdb.GdbError(f"{word!r} is neither in/out nor a value") from None
        agent = _piix3_agent()
        w = agent.add({"ranges": ranges, "direction": direction, "value": value, "stop": True})
        text = f"{words[0]}" + (f" {direction}" if direction else "") + (f" value {value:#x}" if value is not None else "")
        _piix3_port_breaks[w.ident] = text
        if not self._connected:
            gdb.events.stop.connect(_piix3_on_stop)
            self._connected = True
        gdb.write(f"port breakpoint {w.ident}: {text} ({len(agent.breakpoints)} instruction breakpoints)\n")


class _DeletePort(gdb.Command):
    """delete-port [N]: remove port breakpoint N, or all of them.
    Every instruction breakpoint a port breakpoint needed goes with it."""

    def __init__(self):
        super().__init__("delete-port", gdb.COMMAND_USER)

    def invoke(self, arg, from_tty):
        words = _piix3_args(arg, 1)
        agent = _piix3_agent()
        idents = [int(words[0])] if words else list(_piix3_port_breaks)
        for ident in idents:
            if ident not in _piix3_port_breaks:
                raise gdb.GdbError(f"no port breakpoint {ident}")
            agent.remove(ident)
            del _piix3_port_breaks[ident]
        gdb.write(f"deleted {len(idents)} port breakpoint(s); {len(agent.breakpoints)} instruction breakpoints remain\n")


class _IrqState(gdb.Command):
    """irq-state: the interrupt path: the driver's completion mode, both 8259s' mask (IMR),
    request (IRR) and in-service (ISR) registers, and per line the counts since boot (taken,
    spurious, lost, unclaimed; guest/irq.h). Lines with nothing to show are left out."""

    def __init__(self):
        super().__init__("irq-state", gdb.COMMAND_USER)

    def invoke(self, arg, from_tty):
        _piix3_args(arg, 0)
        regs = _piix3_module("regs")
        mode = _piix3_int("ata_completion")
        names = {c.value: c.name.lower() for c in regs.Completion}
        pic = _piix3_int("irq_pic_regs()")  # IRR master | IRR slave << 8 | ISR master << 16 | ISR slave << 24
        imr = _piix3_int("harness_inb(0x21)") | _piix3_int("harness_inb(0xa1)") << 8
        irr, isr = pic & 0xFFFF, pic >> 16
        gdb.write(f"completion: {names.get(mode, mode)} (ata_completion = {mode})\n")
        for name, shift in (("master", 0), ("slave", 8)):
            gdb.write(
                f"8259 {name:<6}  IMR {imr >> shift & 0xFF:#04x}  IRR {irr >> shift & 0xFF:#04x}  "
                f"ISR {isr >> shift & 0xFF:#04x}\n"
            )
        gdb.write("line  masked pending in-service    taken spurious     lost unclaimed\n")
        ide = {line: ch for ch, line in regs.IRQ_IDE.items()}
        for line in range(regs.IRQ_LINES):
            stats = gdb.parse_and_eval(f"irq_stats[{line}]")
            counts = [int(stats[f]) for f in ("taken", "spurious", "lost", "unclaimed")]
            bit = 1 << line
            if not any(counts) and imr & bit and line not in ide:
                continue
            what = f"  IDE {('primary', 'secondary')[ide[line]]}" if line in ide else ""
            gdb.write(
                f"{line:>4}  {'yes' if imr & bit else 'no':>6} {'yes' if irr & bit else 'no':>7} "
                f"{'yes' if isr & bit else 'no':>10} " + " ".join(f"{c:>8}" for c in counts) + what + "\n"
            )


_PIIX3_HELP = """piix3 commands (driver calls: from harness_ready, i.e. after piix3-park):
  piix3-park                    run to harness_ready (the park point)
  ata-drives                    drives the driver found
  ata-last-error                the driver's last failure record
  ata-status [CH]               status and error registers of channel 0/1, decoded
  ata-regs [CH]                 every task-file and bus-master register, decoded
  ata-identify [DRIVE]          IDENTIFY DEVICE through the driver: model, serial, size
  pci-ide                       PCI config space: command register, BARs, IDE timing
  break-port PORT [in|out] [V]  stop on an access to PORT (e.g. break-port 0x1f7 out 0xc5)
  delete-port [N]               remove port breakpoints
  sector DRIVE LBA              hexdump one sector read through the driver
  irq-state                     completion mode, 8259 masks/IRR/ISR, interrupt counts per line
driver calls: call ata_identify(0, harness_xfer_buf), call ata_flush(0), ...
`help user-defined` lists them too; `help COMMAND` explains one.
"""


class _Piix3Help(gdb.Command):
    """piix3-help: list the piix3 commands of this gdbinit."""

    def __init__(self):
        super().__init__("piix3-help", gdb.COMMAND_USER)

    def invoke(self, arg, from_tty):
        gdb.write(_PIIX3_HELP)


_Piix3Help()
_AtaStatus()
_AtaRegs()
_AtaIdentify()
_PciIde()
_BreakPort()
_DeletePort()
_IrqState()
end
